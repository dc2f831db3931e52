"""Sends a known set of events with the real sentry-sdk: two errors, a message, a transaction with
two spans, and one session. Usage: sentry_python.py DSN"""
import sys

import sentry_sdk

sentry_sdk.init(
    dsn=sys.argv[1],
    release="plants@2.14.0+1402",
    environment="production",
    traces_sample_rate=1.0,
    auto_session_tracking=False,
    default_integrations=False,
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
    with sentry_sdk.start_span(op="http.client", name="GET /plants/42"):
        pass
    with sentry_sdk.start_span(op="db.query", name="SELECT plants"):
        pass

sentry_sdk.flush(timeout=10)
