// Sends a known set of events with the real posthog-node: three captures.
// Usage: node posthog_node.js HOST API_KEY
const { PostHog } = require("posthog-node");

const client = new PostHog(process.argv[3], { host: process.argv[2], flushAt: 20, flushInterval: 0 });
for (const [event, props] of [
  ["diagnosis_started", { plant_id: "p-5" }],
  ["diagnosis_finished", { plant_id: "p-5", result: "overwatered" }],
  ["reminder_set", { days: 3 }],
]) {
  client.capture({ distinctId: "user-12", event, properties: { ...props, $app_version: "2.14.0", $os: "iOS" } });
}
client.shutdown().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
