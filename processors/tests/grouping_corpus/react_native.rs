//! React Native errors: Hermes unsymbolicated, fully minified and source-mapped, across builds,
//! platforms and OTA updates, with hard negative twins.

use trellis_schemas::{ErrorEvent, Release};

use super::{Rng, World, event, exception, frame, render};

// ---------------------------------------------------------------------------------------------
// React Native

const SCREENS: &[&str] = &[
    "Cart",
    "Checkout",
    "Home",
    "PlantDetail",
    "Settings",
    "Profile",
    "Search",
    "Camera",
    "Onboarding",
    "Reminders",
    "Garden",
    "Schedule",
];
const ACTIONS: &[&str] = &[
    "handlePress",
    "handleSubmit",
    "loadPlants",
    "fetchSchedule",
    "renderItem",
    "computeTotal",
    "parseResponse",
    "formatDate",
    "uploadPhoto",
    "syncGarden",
    "applyCoupon",
    "toggleReminder",
    "requestPermission",
    "openDetail",
    "refreshFeed",
    "savePlant",
    "deletePlant",
    "scheduleWatering",
    "updateProfile",
    "searchPlants",
    "onRefresh",
    "onEndReached",
    "validateForm",
    "mergeCart",
];
const HELPERS: &[(&str, &str)] = &[
    ("src/api/client.ts", "request"),
    ("src/api/client.ts", "parseJson"),
    ("src/store/cart.ts", "addItem"),
    ("src/store/cart.ts", "removeItem"),
    ("src/store/garden.ts", "waterPlant"),
    ("src/utils/date.ts", "toLocalDate"),
    ("src/utils/money.ts", "formatPrice"),
    ("src/hooks/usePlants.ts", "usePlants"),
    ("src/hooks/useReminders.ts", "useReminders"),
    ("src/utils/images.ts", "resizeImage"),
];
const JS_TEMPLATES: &[(&str, &[&str])] = &[
    (
        "TypeError",
        &[
            "Cannot read property '{prop}' of undefined",
            "undefined is not an object (evaluating '{obj}.{prop}')",
            "{obj}.{prop} is not a function (it is undefined)",
            "null is not an object (evaluating '{obj}.{prop}')",
        ],
    ),
    (
        "ReferenceError",
        &[
            "Property '{prop}' doesn't exist",
            "Can't find variable: {prop}",
        ],
    ),
    (
        "RangeError",
        &[
            "Invalid time value",
            "Maximum call stack size exceeded",
            "Invalid array length {n}",
        ],
    ),
    (
        "Error",
        &[
            "Request failed with status code {code}",
            "Network request failed for {url}",
            "Plant {uuid} not found",
            "Timeout of {n}ms exceeded",
            "User {email} has no garden",
            "Order #{n} could not be synced",
            "Upload failed: {url} returned {code}",
        ],
    ),
    (
        "SyntaxError",
        &[
            "JSON Parse error: Unexpected character: <",
            "Unexpected token < in JSON at position {n}",
        ],
    ),
];
const PROPS: &[&str] = &[
    "id", "price", "name", "schedule", "length", "uri", "userId", "quantity",
];
const OBJECTS: &[&str] = &[
    "plant",
    "item",
    "route.params",
    "user.profile",
    "cart.items",
    "response.data",
];
const RENDERER: &str = "Libraries/Renderer/implementations/ReactNativeRenderer-prod.js";
const BRIDGE: &[(&str, &str)] = &[
    (
        "callFunctionReturnFlushedQueue",
        "Libraries/BatchedBridge/MessageQueue.js",
    ),
    ("__guard", "Libraries/BatchedBridge/MessageQueue.js"),
    ("?anon_0_", "Libraries/BatchedBridge/MessageQueue.js"),
    ("__callFunction", "Libraries/BatchedBridge/MessageQueue.js"),
];
/// The React Native internals between the bridge and the app: touch, effect, timer, promise.
const RN_PATHS: &[&[(&str, &str)]] = &[
    &[
        ("receiveTouches", RENDERER),
        ("batchedUpdates$1", RENDERER),
        ("dispatchEvent", RENDERER),
        (
            "touchableHandlePress",
            "Libraries/Components/Touchable/Touchable.js",
        ),
    ],
    &[
        ("flushPassiveEffects", RENDERER),
        ("commitHookEffectListMount", RENDERER),
    ],
    &[
        ("callTimers", "Libraries/Core/Timers/JSTimers.js"),
        ("_callTimer", "Libraries/Core/Timers/JSTimers.js"),
    ],
    &[
        (
            "callReactNativeMicrotasks",
            "Libraries/Core/Timers/JSTimers.js",
        ),
        ("tryCallOne", "../promise/setimmediate/core.js"),
    ],
];
/// What minifiers and Hermes make of local function names.
const MANGLED: &[&str] = &[
    "t",
    "n",
    "r",
    "o",
    "e",
    "a",
    "i",
    "s",
    "l",
    "u",
    "c",
    "f",
    "Xe",
    "$t",
    "Ae",
    "tn",
    "rn",
    "anonymous",
    "?anon_0_",
];
pub(super) const JS_RELEASES: &[(&str, u32)] = &[
    ("2.1.0", 40),
    ("2.2.0", 42),
    ("2.3.0", 45),
    ("2.3.1", 46),
    ("2.4.0", 50),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Frames resolved through source maps: files, lines and real names.
    SourceMapped,
    /// Unsymbolicated Hermes: bundle frames, some names kept (methods), others mangled.
    Hermes,
    /// Unsymbolicated, every app frame mangled.
    Minified,
}

#[derive(Clone)]
struct AppFrame {
    function: String,
    file: String,
    line: i64,
    /// Whether the name survives minification (methods do, local functions do not).
    visible: bool,
}

/// The share of a source-mapped bug's events whose source map is missing (an OTA update
/// published without uploading it): they arrive unsymbolicated and cannot join their bug's
/// issue by fingerprint; merge candidates are how they find it.
const MISSING_SOURCE_MAP: f64 = 0.04;

#[derive(Clone)]
pub(super) struct JsBug {
    pub(super) label: String,
    ty: &'static str,
    template: &'static str,
    prop: &'static str,
    object: &'static str,
    path: usize,
    frames: Vec<AppFrame>,
    mode: Mode,
}

impl JsBug {
    /// What events of the bug show once mangled names, lines and bundles are gone, symbolicated
    /// and not: two bugs alike in this cannot be told apart by any grouper, so the generator
    /// never makes them.
    fn visible_keys(&self) -> Vec<String> {
        let names: Vec<&str> = self
            .frames
            .iter()
            .filter(|f| f.visible)
            .map(|f| f.function.as_str())
            .collect();
        let unsymbolicated = format!(
            "bundle|{}|{}|{}|{}",
            self.ty,
            names.join(","),
            self.template,
            self.path
        );
        if self.mode != Mode::SourceMapped {
            return vec![unsymbolicated];
        }
        let frames: Vec<String> = self
            .frames
            .iter()
            .map(|f| format!("{}@{}", f.function, f.file))
            .collect();
        vec![
            format!("mapped|{}|{}", self.ty, frames.join(",")),
            unsymbolicated,
        ]
    }
}

impl World {
    /// Bug families: a bug, sometimes with a hard negative twin (same type and message, another
    /// innermost function; or same frames, another type).
    pub(super) fn js_bugs(&mut self, count: usize) -> Vec<JsBug> {
        let mut bugs: Vec<JsBug> = Vec::new();
        while bugs.len() < count {
            let mut base = self.js_bug(self.bugs);
            let mut family = match self.rng.below(10) {
                0..=2 if base.mode != Mode::Minified => {
                    if let Some(last) = base.frames.last_mut() {
                        last.visible = true;
                    }
                    let twin = self.twin_function(&base);
                    vec![base, twin]
                }
                3..=4 => {
                    let twin = self.twin_type(&base);
                    vec![base, twin]
                }
                5..=6 if base.mode != Mode::SourceMapped => match self.twin_message(&base) {
                    Some(twin) => vec![base, twin],
                    None => vec![base],
                },
                _ => vec![base],
            };
            let family_keys: Vec<String> = family.iter().flat_map(JsBug::visible_keys).collect();
            if self.register(family_keys) {
                bugs.append(&mut family);
            }
        }
        bugs
    }

    pub(super) fn js_bug(&mut self, n: usize) -> JsBug {
        let rng = &mut self.rng;
        let mode = match rng.below(20) {
            0..=7 => Mode::SourceMapped,
            8..=16 => Mode::Hermes,
            _ => Mode::Minified,
        };
        let (ty, templates) = *rng.pick(JS_TEMPLATES);
        let screen = rng.pick_str(SCREENS);
        let file = format!("src/screens/{screen}.tsx");
        let mut frames = vec![
            AppFrame {
                function: format!("{screen}Screen"),
                file: file.clone(),
                line: rng.range(20, 60),
                visible: false,
            },
            AppFrame {
                function: rng.pick(ACTIONS).to_string(),
                file,
                line: rng.range(60, 300),
                visible: false,
            },
        ];
        if rng.chance(0.5) {
            let (file, function) = *rng.pick(HELPERS);
            frames.push(AppFrame {
                function: function.into(),
                file: file.into(),
                line: rng.range(5, 120),
                visible: false,
            });
        }
        for frame in &mut frames {
            frame.visible = mode != Mode::Minified && rng.chance(0.5);
        }
        if mode != Mode::Minified && !frames.iter().any(|f| f.visible) {
            let i = rng.below(frames.len());
            frames[i].visible = true;
        }
        let innermost = frames
            .last()
            .map(|f| f.function.clone())
            .unwrap_or_default();
        JsBug {
            label: format!("js{n}-{mode:?}-{ty}-{innermost}"),
            ty,
            template: rng.pick_str(templates),
            prop: rng.pick_str(PROPS),
            object: rng.pick_str(OBJECTS),
            path: rng.below(RN_PATHS.len()),
            frames,
            mode,
        }
    }

    pub(super) fn twin_function(&mut self, base: &JsBug) -> JsBug {
        let mut twin = base.clone();
        let used: Vec<String> = base.frames.iter().map(|f| f.function.clone()).collect();
        let other = loop {
            let candidate = self.rng.pick_str(ACTIONS);
            if !used.iter().any(|u| u == candidate) {
                break candidate;
            }
        };
        if let Some(last) = twin.frames.last_mut() {
            last.function = other.into();
            last.line = self.rng.range(60, 300);
        }
        twin.label = format!("{}~twin-{other}", base.label);
        twin
    }

    pub(super) fn twin_type(&mut self, base: &JsBug) -> JsBug {
        let mut twin = base.clone();
        let (ty, templates) = loop {
            let candidate = *self.rng.pick(JS_TEMPLATES);
            if candidate.0 != base.ty {
                break candidate;
            }
        };
        twin.ty = ty;
        twin.template = self.rng.pick_str(templates);
        twin.label = format!("{}~twin-{ty}", base.label);
        twin
    }

    /// Same type, frames and path, another message: in unsymbolicated code only the message
    /// tells them apart.
    pub(super) fn twin_message(&mut self, base: &JsBug) -> Option<JsBug> {
        let templates = JS_TEMPLATES.iter().find(|(ty, _)| *ty == base.ty)?.1;
        let others: Vec<&'static str> = templates
            .iter()
            .copied()
            .filter(|t| *t != base.template)
            .collect();
        if others.is_empty() {
            return None;
        }
        let mut twin = base.clone();
        twin.template = self.rng.pick_str(&others);
        twin.label = format!("{}~twin-message", base.label);
        Some(twin)
    }

    pub(super) fn js_event(&mut self, bug: &JsBug) -> ErrorEvent {
        let rng = &mut self.rng;
        let android = rng.chance(0.5);
        let v = rng.below(JS_RELEASES.len());
        let (version, build) = JS_RELEASES[v];
        let update = rng.chance(0.4).then(|| rng.pick(&self.updates[v]).clone());
        let bundle = bundle_path(rng, android, update.as_deref());
        let line_shift = v as i64 * 7 + i64::from(update.is_some()) * 3;
        let unsymbolicated = bug.mode != Mode::SourceMapped || rng.chance(MISSING_SOURCE_MAP);
        let mut frames = Vec::new();
        for (function, file) in BRIDGE.iter().chain(RN_PATHS[bug.path]) {
            frames.push(if unsymbolicated {
                frame(function, &bundle, 1, rng.range(10_000, 900_000), true)
            } else {
                frame(
                    function,
                    &format!("node_modules/react-native/{file}"),
                    rng.range(100, 9_000),
                    rng.range(3, 80),
                    false,
                )
            });
            if rng.chance(0.08) {
                frames.push(frame(
                    rng.pick_str(&["forEach", "apply", "map"]),
                    "[native code]",
                    0,
                    0,
                    false,
                ));
            }
        }
        if unsymbolicated && rng.chance(0.3) {
            frames.push(frame(
                rng.pick_str(&["anonymous", "?anon_0_"]),
                &bundle,
                1,
                rng.range(10_000, 900_000),
                true,
            ));
        }
        for app in &bug.frames {
            frames.push(if unsymbolicated {
                let function = if app.visible {
                    app.function.as_str()
                } else {
                    rng.pick(MANGLED)
                };
                frame(function, &bundle, 1, rng.range(900_000, 2_000_000), true)
            } else {
                let function = if rng.chance(0.15) {
                    format!("Object.{}", app.function)
                } else {
                    app.function.clone()
                };
                let file = if rng.chance(0.8) {
                    format!("app:///{}", app.file)
                } else {
                    app.file.clone()
                };
                frame(
                    &function,
                    &file,
                    app.line + line_shift,
                    rng.range(3, 80),
                    true,
                )
            });
            if rng.chance(0.1) {
                frames.push(frame("map", "[native code]", 0, 0, false));
            }
        }
        let template = bug
            .template
            .replace("{prop}", bug.prop)
            .replace("{obj}", bug.object);
        let release = Release {
            platform: if android { "android" } else { "ios" }.into(),
            app_version: version.into(),
            build: Some((if android { build + 1000 } else { build }).to_string()),
            update_id: update,
            ..Release::default()
        };
        event(
            "plantapp",
            release,
            vec![exception(bug.ty, render(&template, rng), frames)],
        )
    }
}

/// Where the JavaScript bundle lives: embedded in the app, or an EAS update's download.
fn bundle_path(rng: &mut Rng, android: bool, update: Option<&str>) -> String {
    match (android, update) {
        (true, None) => rng
            .pick(&[
                "index.android.bundle",
                "address at index.android.bundle",
                "app:///index.android.bundle",
            ])
            .to_string(),
        (true, Some(u)) => match rng.below(2) {
            0 => format!("/data/user/0/com.plantapp/files/.expo-internal/{u}/bundle"),
            _ => format!("file:///data/user/0/com.plantapp/files/.expo-internal/{u}.bundle"),
        },
        (false, None) => rng
            .pick(&["main.jsbundle", "app:///main.jsbundle"])
            .to_string(),
        (false, Some(u)) => format!(
            "file:///var/mobile/Containers/Data/Application/{}/Library/Application Support/.expo-internal/updates/{u}/app.bundle",
            rng.uuid().to_uppercase()
        ),
    }
}
