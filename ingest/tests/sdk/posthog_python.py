"""Sends a known set of events with the real posthog SDK: two captures, a screen, an identify-style
$set and an exception. Usage: posthog_python.py HOST API_KEY"""
import sys

from posthog import Posthog

client = Posthog(sys.argv[2], host=sys.argv[1], sync_mode=True, disable_geoip=True)
props = {"$app_version": "2.14.0", "$expo_update_id": "u-42", "$expo_channel": "staging"}
client.capture("plant_watered", distinct_id="user-9", properties={**props, "plant_id": "p-1"})
client.capture("post_liked", distinct_id="user-9", properties={**props, "post_id": "c-3"})
client.capture("$screen", distinct_id="user-9", properties={**props, "$screen_name": "Community"})
client.set(distinct_id="user-9", properties={"plan": "pro"})
try:
    raise ValueError("strain not found")
except ValueError as e:
    client.capture_exception(e, distinct_id="user-9", properties=props)
client.flush()
client.shutdown()
