"""Sends a known set of events with the real posthog SDK in its v1 capture mode
(POST /i/v1/analytics/events, bearer key, compressed body), one batch of them, and one event
trellis must refuse. Prints what the SDK was told about refused events, as JSON: the uuids it was
told to drop, with the reasons. Usage: posthog_python_v1.py HOST API_KEY COMPRESSION"""
import json
import sys

from posthog import Posthog

drops = []
errors = []


def on_error(error, batch):
    found = getattr(error, "drops", None)
    if found:
        drops.extend({"uuid": uuid, "details": details} for uuid, details in found)
    else:
        errors.append(repr(error))


client = Posthog(
    sys.argv[2],
    host=sys.argv[1],
    capture_mode="v1",
    capture_compression=sys.argv[3],
    flush_at=100,
    on_error=on_error,
    disable_geoip=True,
)
props = {"$app_version": "2.14.0", "$expo_update_id": "u-42", "$expo_channel": "staging"}
client.capture("plant_watered", distinct_id="user-9", properties={**props, "$session_id": "s-7"})
client.capture("$screen", distinct_id="user-9", properties={**props, "$screen_name": "Community"})
client.set(distinct_id="user-9", properties={"plan": "pro"})
try:
    raise ValueError("strain not found")
except ValueError as e:
    client.capture_exception(e, distinct_id="user-9", properties=props)
# An exception with nothing to group by: trellis answers drop for this one event.
refused = client.capture("$exception", distinct_id="user-9", properties={})
client.flush()
client.shutdown()
print(json.dumps({"refused": refused, "drops": drops, "errors": errors}))
