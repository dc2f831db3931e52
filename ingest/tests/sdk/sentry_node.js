// Sends a known set of events with the real @sentry/node: an error, a message and a transaction
// with one HTTP span. Usage: node sentry_node.js DSN [stream]; with `stream` the SDK streams spans
// (`traceLifecycle: "stream"`: `span` items in the v2 container) instead of sending a transaction.
const Sentry = require("@sentry/node");

Sentry.init({
  dsn: process.argv[2],
  release: "plants@2.14.0+1402",
  environment: "production",
  tracesSampleRate: 1.0,
  defaultIntegrations: false,
  ...(process.argv[3] === "stream" && { traceLifecycle: "stream" }),
});
Sentry.setUser({ id: "user-11" });
Sentry.captureException(new TypeError("undefined is not an object (evaluating 'plant.name')"));
Sentry.captureMessage("Reminder sync slow", "warning");
Sentry.startSpan({ name: "CalendarScreen", op: "ui.load" }, () => {
  Sentry.startSpan({ name: "GET /reminders", op: "http.client" }, () => {});
});
Sentry.flush(10000).then((ok) => process.exit(ok ? 0 : 1));
