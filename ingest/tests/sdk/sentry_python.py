"""Sends a known set of events with the real sentry-sdk: two errors, a message, one session, and a
transaction with two measurements, two manual spans and a real HTTP request traced by the SDK's
stdlib integration (to a server of its own: the SDK never traces requests to its DSN's host).
Usage: sentry_python.py DSN"""
import http.server
import sys
import threading
import urllib.request
import warnings

import sentry_sdk
from sentry_sdk.integrations.stdlib import StdlibIntegration


class Plants(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404 if "missing" in self.path else 200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Plants)
threading.Thread(target=server.serve_forever, daemon=True).start()
api = f"http://127.0.0.1:{server.server_port}"

sentry_sdk.init(
    dsn=sys.argv[1],
    release="plants@2.14.0+1402",
    environment="production",
    traces_sample_rate=1.0,
    auto_session_tracking=False,
    default_integrations=False,
    integrations=[StdlibIntegration()],
)
sentry_sdk.set_user({"id": "user-7"})
sentry_sdk.set_tag("expo-update-id", "7d3e9a10-0000-4000-8000-000000000001")
sentry_sdk.set_tag("expo-channel", "production")
sentry_sdk.set_context("device", {"model": "iPhone15,2"})
sentry_sdk.set_context("os", {"name": "iOS", "version": "17.4.1"})

scope = sentry_sdk.get_isolation_scope()
scope.start_session(session_mode="application")
sentry_sdk.add_breadcrumb(category="navigation", message="Home -> PlantDetail")
try:
    {}["plant"]
except KeyError:
    sentry_sdk.capture_exception()
try:
    1 / 0
except ZeroDivisionError:
    sentry_sdk.capture_exception()
sentry_sdk.capture_message("Watering reminder could not be scheduled", level="warning")
scope.end_session()

with sentry_sdk.start_transaction(op="ui.load", name="PlantDetail"):
    # What @sentry/react-native reports as measurements; set_measurement is deprecated in
    # sentry-python but still sends them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sentry_sdk.set_measurement("app_start_cold", 812, "millisecond")
        sentry_sdk.set_measurement("time_to_initial_display", 245.5, "millisecond")
    with sentry_sdk.start_span(op="http.client", name="GET /plants/42"):
        pass
    with sentry_sdk.start_span(op="db.query", name="SELECT plants"):
        pass
    urllib.request.urlopen(f"{api}/plants/7d3e9a10-0000-4000-8000-000000000001/photos?size=large").read()

sentry_sdk.flush(timeout=10)
