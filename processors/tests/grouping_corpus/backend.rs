//! Backend and native errors: Python (Django and Celery) across deploys, and Kotlin coroutine
//! crashes whose anonymous classes renumber between builds.

use trellis_schemas::{ErrorEvent, Frame, Release};

use super::{Rng, World, event, exception, frame, render};

// ---------------------------------------------------------------------------------------------
// Python and Kotlin

const PY_MODULES: &[&str] = &[
    "app.api.views",
    "app.api.serializers",
    "app.services.billing",
    "app.services.reminders",
    "app.services.weather",
    "app.models.garden",
    "app.models.plant",
    "app.tasks.watering",
    "app.utils.dates",
    "app.integrations.push",
    "app.services.orders",
    "app.services.photos",
];
const PY_FUNCTIONS: &[&str] = &[
    "create_order",
    "charge_card",
    "compute_schedule",
    "get_forecast",
    "send_push",
    "parse_reminder",
    "parse_schedule",
    "serialize_plant",
    "water_plants",
    "next_occurrence",
    "sync_garden",
    "import_csv",
    "resize_photo",
    "apply_discount",
    "refund_order",
    "list_plants",
    "update_profile",
    "notify_owner",
];
const PY_TEMPLATES: &[(&str, &[&str])] = &[
    ("KeyError", &["'{prop}'"]),
    (
        "ValueError",
        &[
            "invalid literal for int() with base 10: '{word}'",
            "time data '{date}' does not match format '%Y-%m-%d'",
            "Plant {n} has no schedule",
        ],
    ),
    (
        "AttributeError",
        &["'NoneType' object has no attribute '{prop}'"],
    ),
    (
        "TypeError",
        &[
            "unsupported operand type(s) for +: 'int' and 'NoneType'",
            "'<' not supported between instances of 'datetime.date' and 'NoneType'",
        ],
    ),
    ("ZeroDivisionError", &["division by zero"]),
    (
        "django.db.utils.IntegrityError",
        &[
            "duplicate key value violates unique constraint \"{prop}_pkey\"\nDETAIL:  Key (id)=({n}) already exists.",
        ],
    ),
    (
        "app.errors.NotFound",
        &["Garden {uuid} does not exist", "no user with email {email}"],
    ),
    ("TimeoutError", &["timed out after {n} seconds"]),
];
const DJANGO: &[(&str, &str)] = &[
    ("django.core.handlers.exception", "inner"),
    ("django.core.handlers.base", "_get_response"),
    ("django.views.generic.base", "view"),
];
const CELERY: &[(&str, &str)] = &[
    ("celery.app.trace", "trace_task"),
    ("celery.app.trace", "__protected_call__"),
];
const PY_RELEASES: &[&str] = &["2024.11.3", "2024.11.18", "2024.12.2", "2025.1.7"];
const PY_ROOTS: &[&str] = &[
    "/srv/plantapi/releases/20241103120000",
    "/app",
    "/home/deploy/plantapi/current",
];
const SITE_PACKAGES: &[&str] = &[
    "/srv/plantapi/venv/lib/python3.11/site-packages",
    "/usr/local/lib/python3.12/site-packages",
];

#[derive(Clone)]
pub(super) struct PyBug {
    pub(super) label: String,
    ty: &'static str,
    template: &'static str,
    prop: &'static str,
    /// `(module, function, line)`, outermost first.
    frames: Vec<(&'static str, &'static str, i64)>,
    celery: bool,
    /// Whether the call goes through the vendored retry helper (not in-app by project rule).
    vendored: bool,
    /// The wrapper a handler raised from the original exception.
    chained: Option<&'static str>,
    /// Every frame is library code (`in_app` false), as in a worker's internals.
    library_only: bool,
}

impl PyBug {
    fn visible_key(&self) -> String {
        let frames: Vec<String> = self
            .frames
            .iter()
            .map(|(m, f, _)| format!("{m}.{f}"))
            .collect();
        format!(
            "{}|{:?}|{}|{}",
            self.ty,
            self.chained,
            frames.join(","),
            self.library_only
        )
    }
}

impl World {
    pub(super) fn py_bugs(&mut self, count: usize) -> Vec<PyBug> {
        let mut bugs: Vec<PyBug> = Vec::new();
        while bugs.len() < count {
            let base = self.py_bug(self.bugs, bugs.len() % 8 == 7);
            let mut family = vec![base.clone()];
            match self.rng.below(10) {
                0..=2 => {
                    let mut twin = base.clone();
                    let other = self.rng.pick_str(PY_FUNCTIONS);
                    if let Some(last) = twin.frames.last_mut() {
                        last.1 = other;
                    }
                    twin.label = format!("{}~twin-{other}", base.label);
                    family.push(twin);
                }
                3 => {
                    let mut twin = base.clone();
                    let (ty, templates) = *self.rng.pick(PY_TEMPLATES);
                    (twin.ty, twin.template) = (ty, self.rng.pick_str(templates));
                    twin.label = format!("{}~twin-{ty}", base.label);
                    family.push(twin);
                }
                _ => {}
            }
            let family_keys: Vec<String> = family.iter().map(PyBug::visible_key).collect();
            if self.register(family_keys) {
                bugs.append(&mut family);
            }
        }
        bugs
    }

    pub(super) fn py_bug(&mut self, n: usize, library_only: bool) -> PyBug {
        let rng = &mut self.rng;
        let (ty, templates) = *rng.pick(PY_TEMPLATES);
        let frames: Vec<(&'static str, &'static str, i64)> = if library_only {
            let module = rng.pick_str(&[
                "celery.worker.consumer.consumer",
                "kombu.connection",
                "celery.backends.redis",
            ]);
            let function = rng.pick_str(&[
                "on_connection_error",
                "ensure_connection",
                "_reconnect",
                "on_task_received",
            ]);
            vec![
                ("celery.worker.strategy", "task_message_handler", 120),
                (module, function, rng.range(50, 700)),
            ]
        } else {
            (0..rng.range(2, 5))
                .map(|_| {
                    (
                        rng.pick_str(PY_MODULES),
                        rng.pick_str(PY_FUNCTIONS),
                        rng.range(10, 400),
                    )
                })
                .collect()
        };
        let innermost = frames.last().map_or("", |f| f.1);
        PyBug {
            label: format!("py{n}-{ty}-{innermost}"),
            ty,
            template: rng.pick_str(templates),
            prop: rng.pick_str(&["plant_id", "garden", "owner", "schedule", "orders"]),
            frames,
            celery: rng.chance(0.3),
            vendored: !library_only && rng.chance(0.3),
            chained: (!library_only && rng.chance(0.25))
                .then(|| rng.pick_str(&["app.errors.SyncFailed", "RuntimeError"])),
            library_only,
        }
    }

    pub(super) fn py_event(&mut self, bug: &PyBug) -> ErrorEvent {
        let rng = &mut self.rng;
        let deploy = rng.below(PY_RELEASES.len());
        let root = rng.pick_str(PY_ROOTS);
        let site = rng.pick_str(SITE_PACKAGES);
        let library = |rng: &mut Rng, module: &str, function: &str| {
            let path = format!("{}.py", module.replace('.', "/"));
            Frame {
                abs_path: Some(format!("{site}/{path}")),
                ..py_frame(module, function, &path, rng.range(30, 900), false)
            }
        };
        let framework = if bug.celery { CELERY } else { DJANGO };
        let mut outer: Vec<Frame> = framework.iter().map(|(m, f)| library(rng, m, f)).collect();
        let mut app: Vec<Frame> = Vec::new();
        for (i, (module, function, line)) in bug.frames.iter().enumerate() {
            if bug.library_only {
                app.push(library(rng, module, function));
                continue;
            }
            if bug.vendored && i + 1 == bug.frames.len() {
                for _ in 0..rng.range(1, 4) {
                    let helper = rng.pick_str(&["retry_call", "call_with_retry", "_attempt"]);
                    app.push(py_frame(
                        "app.vendor.retry",
                        helper,
                        "app/vendor/retry.py",
                        rng.range(10, 90),
                        true,
                    ));
                }
            }
            let path = format!("{}.py", module.replace('.', "/"));
            let mut frame = py_frame(module, function, &path, line + deploy as i64 * 4, true);
            frame.abs_path = Some(format!("{root}/{path}"));
            app.push(frame);
        }
        let template = bug.template.replace("{prop}", bug.prop);
        let message = render(&template, rng);
        let exceptions = match bug.chained {
            None => {
                outer.extend(app);
                vec![exception(bug.ty, message, outer)]
            }
            Some(wrapper) => {
                // The handler in the second-innermost frame raised the wrapper from the original.
                let split = app.len().saturating_sub(2);
                let inner = app.split_off(split);
                outer.extend(app);
                outer.push(inner[0].clone());
                let wrapped = render("failed to sync garden {n}", rng);
                vec![
                    exception(wrapper, wrapped, outer),
                    exception(bug.ty, message, inner),
                ]
            }
        };
        let release = Release {
            platform: "python".into(),
            app_version: PY_RELEASES[deploy].into(),
            ..Release::default()
        };
        event("plantapi", release, exceptions)
    }

    /// Kotlin coroutine crashes; anonymous classes and lambdas renumber between builds.
    pub(super) fn kotlin(&mut self, count: usize) {
        let screens = [
            ("cart", "Cart", "loadCart"),
            ("garden", "Garden", "water"),
            ("camera", "Camera", "capture"),
            ("profile", "Profile", "save"),
        ];
        for (i, (package, screen, action)) in screens.iter().take(count).enumerate() {
            let ty = if i % 2 == 0 {
                "java.lang.NullPointerException"
            } else {
                "java.lang.IllegalStateException"
            };
            let label = format!("kotlin{i}-{screen}ViewModel.{action}");
            for _ in 0..self.rng.range(3, 10) {
                let rng = &mut self.rng;
                let n = rng.range(1, 4);
                let build = rng.range(1040, 1060);
                let frames = vec![
                    kt_frame(
                        "kotlinx.coroutines.DispatchedTask",
                        "run",
                        "DispatchedTask.kt",
                        rng.range(90, 110),
                        false,
                    ),
                    kt_frame(
                        "kotlin.coroutines.jvm.internal.BaseContinuationImpl",
                        "resumeWith",
                        "ContinuationImpl.kt",
                        33,
                        false,
                    ),
                    kt_frame(
                        &format!("com.plantapp.ui.{package}.{screen}ViewModel${action}${n}"),
                        "invokeSuspend",
                        &format!("{screen}ViewModel.kt"),
                        40 + build % 7,
                        true,
                    ),
                    kt_frame(
                        &format!("com.plantapp.data.{screen}Repository"),
                        &format!("lambda${action}${}", n - 1),
                        &format!("{screen}Repository.kt"),
                        80 + build % 5,
                        true,
                    ),
                ];
                let message = render("Fragment {hex} not attached to a context.", rng);
                let release = Release {
                    platform: "android".into(),
                    app_version: "2.3.0".into(),
                    build: Some(build.to_string()),
                    ..Release::default()
                };
                let event = event("plantapp", release, vec![exception(ty, message, frames)]);
                self.push(&label, event);
            }
        }
    }

    pub(super) fn requests_event(
        &mut self,
        module: &str,
        function: &str,
        ty: &str,
        host: &str,
    ) -> ErrorEvent {
        let rng = &mut self.rng;
        let path = format!("{}.py", module.replace('.', "/"));
        let frames = vec![
            py_frame(
                "django.core.handlers.base",
                "_get_response",
                "django/core/handlers/base.py",
                197,
                false,
            ),
            py_frame(module, function, &path, rng.range(20, 200), true),
            py_frame(
                "requests.sessions",
                "request",
                "requests/sessions.py",
                589,
                false,
            ),
            py_frame(
                "requests.adapters",
                "send",
                "requests/adapters.py",
                rng.range(500, 520),
                false,
            ),
        ];
        let message = render(
            &format!(
                "HTTPSConnectionPool(host='{host}', port=443): Max retries exceeded with url: /v1/charges/ch_{{hex}} (Caused by NewConnectionError('<urllib3.connection.HTTPSConnection object at 0x{{hex}}>: Failed to establish a new connection: [Errno 111] Connection refused'))"
            ),
            rng,
        );
        let release = Release {
            platform: "python".into(),
            app_version: "2024.12.2".into(),
            ..Release::default()
        };
        event("plantapi", release, vec![exception(ty, message, frames)])
    }
}

fn py_frame(module: &str, function: &str, path: &str, line: i64, in_app: bool) -> Frame {
    Frame {
        module: Some(module.into()),
        ..frame(function, path, line, 0, in_app)
    }
}

fn kt_frame(class: &str, function: &str, file: &str, line: i64, in_app: bool) -> Frame {
    Frame {
        module: Some(class.into()),
        ..frame(function, file, line, 0, in_app)
    }
}
