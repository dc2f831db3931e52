//! What analysts ask of the events `trellis run` stored, through the CLI: funnels, retention
//! cohorts and paths after a screen, each with exact counts.

mod support;

use std::process::Stdio;

use support::cli::{csv_until, post_batch, start_run, trellis};

/// `trellis funnel` over what `trellis run` stored: people through steps in order, within the
/// window, in all and by app version.
#[test]
fn funnel_counts_people_through_steps_in_order_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_run(dir.path(), &[], Stdio::null());
    let t0 = 1_795_660_800_000i64;
    let mut n = 0;
    let mut event = |device: &str, version: &str, at_s: i64, step: &str| {
        n += 1;
        let mut e = serde_json::json!({
            "kind": "analytics", "event_id": format!("00000000-0000-4000-8000-{n:012}"),
            "device_id": device, "timestamp": t0 + at_s * 1000,
            "release": {"platform": "ios", "app_version": version},
        });
        match step.strip_prefix("screen:") {
            Some(screen) => {
                e["name"] = "$screen".into();
                e["screen"] = screen.into();
            }
            None => e["name"] = step.into(),
        }
        e
    };
    let events = vec![
        // All three steps.
        event("d1", "2.14.0", 0, "screen:Home"),
        event("d1", "2.14.0", 60, "screen:PlantDetail"),
        event("d1", "2.14.0", 120, "plant_watered"),
        // Watered before the detail screen: two steps.
        event("d2", "2.14.0", 0, "screen:Home"),
        event("d2", "2.14.0", 30, "plant_watered"),
        event("d2", "2.14.0", 60, "screen:PlantDetail"),
        // The detail screen two hours later, past the window: one step.
        event("d3", "2.15.0", 0, "screen:Home"),
        event("d3", "2.15.0", 7200, "screen:PlantDetail"),
        // Never on the first step: not in the funnel.
        event("d4", "2.15.0", 0, "screen:PlantDetail"),
        event("d4", "2.15.0", 10, "plant_watered"),
    ];
    assert_eq!(post_batch(&base, &events)["accepted"], 10);
    let steps = [
        "funnel",
        "screen:Home",
        "screen:PlantDetail",
        "plant_watered",
    ];
    let with = |extra: &[&'static str]| [&steps[..], extra].concat();
    csv_until(
        dir.path(),
        &steps,
        "step_1,step_2,step_3,conversion_pct\n3,2,1,33.33\n",
    );
    csv_until(
        dir.path(),
        &with(&["--by", "app-version"]),
        "app_version,step_1,step_2,step_3,conversion_pct\n2.14.0,2,2,1,50.0\n2.15.0,1,0,0,0.0\n",
    );
    // A window of three hours lets the third person reach the detail screen.
    csv_until(
        dir.path(),
        &with(&["--within", "3h"]),
        "step_1,step_2,step_3,conversion_pct\n3,3,1,33.33\n",
    );
    // A step that names no screen is refused with the reason.
    let out = trellis()
        .args(["funnel", "screen:", "plant_watered"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a screen step names its screen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `trellis cohorts` over what `trellis run` stored: weekly retention by install week and by
/// the OTA update of each person's first event.
#[test]
fn cohorts_count_who_came_back_each_week_by_install_week_and_first_update() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_run(dir.path(), &[], Stdio::null());
    // 2026-11-05 00:00 UTC, a Thursday: its week starts on Monday 2026-11-02. (Ingest takes no
    // event from the future, so the weeks after must have passed.)
    let t0 = 1_793_836_800_000i64;
    let (hour, day) = (3_600_000i64, 86_400_000i64);
    let mut n = 0;
    let mut event = |device: &str, update: &str, at: i64| {
        n += 1;
        serde_json::json!({
            "kind": "analytics", "name": "app_opened",
            "event_id": format!("00000000-0000-4000-8000-{n:012}"),
            "device_id": device, "timestamp": t0 + at,
            "release": {"platform": "android", "app_version": "2.14.0", "update_id": update},
        })
    };
    let events = vec![
        // Installed that week on update u-1: back in its second and third weeks.
        event("a", "u-1", 0),
        event("a", "u-2", 8 * day),
        event("a", "u-2", 15 * day),
        // Installed that week on u-1: only its first week.
        event("b", "u-1", day),
        event("b", "u-1", 4 * day),
        // Installed the next week on u-2: back a week later.
        event("c", "u-2", 7 * day),
        event("c", "u-2", 14 * day + hour),
    ];
    assert_eq!(post_batch(&base, &events)["accepted"], 7);
    csv_until(
        dir.path(),
        &["cohorts", "--by", "install-week", "--weeks", "3"],
        "install_week,people,week_0,week_1,week_2\n\
         2026-11-02,2,2,1,1\n\
         2026-11-09,1,1,1,0\n",
    );
    csv_until(
        dir.path(),
        &["cohorts", "--by", "first-update", "--weeks", "3"],
        "first_update,people,week_0,week_1,week_2\nu-1,2,2,1,1\nu-2,1,1,1,0\n",
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `trellis paths` over what `trellis run` stored: the screens people went to after one, most
/// followed first, a long pause ending a path.
#[test]
fn paths_after_a_screen_are_counted_most_followed_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_run(dir.path(), &[], Stdio::null());
    let t0 = 1_795_660_800_000i64;
    let mut n = 0;
    let mut view = |device: &str, at_s: i64, screen: &str| {
        n += 1;
        serde_json::json!({
            "kind": "analytics", "name": "$screen", "screen": screen,
            "event_id": format!("00000000-0000-4000-8000-{n:012}"),
            "device_id": device, "timestamp": t0 + at_s * 1000,
            "release": {"platform": "ios", "app_version": "2.14.0"},
        })
    };
    let events = vec![
        view("d1", 0, "Home"),
        view("d1", 10, "PlantDetail"),
        view("d1", 20, "Settings"),
        view("d5", 0, "Home"),
        view("d5", 15, "PlantDetail"),
        view("d5", 40, "Settings"),
        view("d2", 0, "Home"),
        view("d2", 10, "PlantDetail"),
        view("d3", 0, "Home"),
        view("d3", 5, "Settings"),
        // Two hours later is another visit: the path after Home ends at once.
        view("d4", 0, "Home"),
        view("d4", 7200, "PlantDetail"),
    ];
    assert_eq!(post_batch(&base, &events)["accepted"], 12);
    let expected = "then_1,then_2,views\n\
                    PlantDetail,Settings,2\n\
                    (end),(end),1\n\
                    PlantDetail,(end),1\n\
                    Settings,(end),1\n";
    csv_until(dir.path(), &["paths", "--after", "Home"], expected);
    child.kill().unwrap();
    child.wait().unwrap();
}
