//! The page (`mvc run --ui`, `mvc ui`, report.html), as a person uses it: real runs of
//! `tests/data/ui/page.toml` served on 127.0.0.1, read by headless Chromium over WebDriver
//! (screenshots in target/tmp/ui-screenshots/), and by raw HTTP for what a browser would
//! never send (paths with `..`, ids that are not hex).

use crate::common::browser::Browser;
use crate::common::{Background, Sandbox, raw_http};
use std::io::Write;
use std::time::Duration;

/// The page's test pipeline and what it reads, in a sandbox.
fn page_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.copy_from_repo("pipelines/offline/objects");
    sb.copy_from_repo("tests/data/clip-tiny");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ui/page.toml"),
        sb.path().join("page.toml"),
    )
    .unwrap();
    sb
}

/// `mvc run page.toml --ui 127.0.0.1:0`, each `slow` task sleeping `slow` seconds.
fn run_with_page(sb: &Sandbox, slow: &str) -> Background {
    let mut cmd = sb.command(&["run", "page.toml", "--ui", "127.0.0.1:0", "-j", "2"]);
    cmd.env("MVC_SLOW", slow);
    Background::start(&mut cmd, true)
}

/// `mvc ui page.toml` on the sandbox's cache.
fn serve_cache(sb: &Sandbox) -> Background {
    Background::start(
        &mut sb.command(&["ui", "page.toml", "--listen", "127.0.0.1:0"]),
        true,
    )
}

/// One raw HTTP/1.1 GET (no client normalises the path): (status, headers and body).
fn raw_get(url: &str, path: &str) -> (u16, String) {
    raw_http(url, "GET", path)
}

/// The `ran` cell of the `slow` stage in the page's stages table, as text (null before the
/// table exists).
const SLOW_DONE: &str = "const row = [...document.querySelectorAll('#stages tr')]
        .find(r => r.cells[0] && r.cells[0].textContent === 'slow');
    return row ? row.querySelector('[data-field=\"ran\"]').textContent : null;";

/// The live page during a run: counts move through the event stream, the failure is listed
/// with its reason and its log opens, the caption's and the log's markup stay text, the
/// console stays clean.
#[test]
fn the_live_page_follows_a_run_in_chromium() {
    let Some(browser) = Browser::start("the_live_page_follows_a_run_in_chromium") else {
        return;
    };
    let sb = page_sandbox();
    let mut run = run_with_page(&sb, "0.4");
    let url = run.url.clone().unwrap();
    browser.goto(&url);
    browser.eval("window.__loadedOnce = true; return 1;");
    browser.wait_until(
        "the first event",
        "return document.body.dataset.events",
        Duration::from_secs(20),
    );
    let before = browser.wait_until("the slow stage's row", SLOW_DONE, Duration::from_secs(30));
    let before: u64 = before.as_str().unwrap().parse().unwrap();
    let after = browser.wait_until(
        "the slow stage's count to change without a reload",
        &format!(
            "const n = Number((function() {{ {SLOW_DONE} }})()); \
             return window.__loadedOnce && n > {before} ? n : null;"
        ),
        Duration::from_secs(60),
    );
    assert_eq!(
        browser.eval("return document.body.dataset.transport"),
        "events"
    );
    assert!(after.as_u64().unwrap() > before, "{before} → {after}");
    check_failure_listed(&browser);
    browser.screenshot("live-run");
    assert_eq!(browser.console_errors(), Vec::<String>::new());
    check_log_opens(&browser);
    check_objects_grid(&browser, &url, "live-objects");
    assert_eq!(browser.console_errors(), Vec::<String>::new());
    let ran = run.finish(Duration::from_secs(300));
    assert_eq!(
        ran.code,
        Some(1),
        "the broken object fails the run: {}",
        ran.stderr
    );
    check_cache_page(&sb, &browser);
    check_report_offline(&sb, &browser);
}

/// The failure group names the stage, the reason and the item, and the last lines of its
/// log, where `<img onerror>` is text.
fn check_failure_listed(browser: &Browser) {
    browser.wait_until(
        "the failure and its log's last lines",
        "const g = document.querySelector('#failure-groups .failure');
         const tail = g && g.querySelector('pre.logtail');
         return g && tail && tail.textContent.includes('onerror') ? g.innerText : null;",
        Duration::from_secs(30),
    );
    let text = browser
        .eval("return document.querySelector('#failure-groups').innerText")
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("objects"), "{text}");
    assert!(text.contains("broken"), "{text}");
    assert!(text.contains("status 3"), "the reason: {text}");
    assert!(
        text.contains("<img src=x onerror="),
        "the log line shows as text: {text}"
    );
    assert_nothing_ran(browser);
}

/// No element came from the payloads, and no payload ran.
fn assert_nothing_ran(browser: &Browser) {
    assert_eq!(
        browser.eval(
            "return [document.body.getAttribute('data-pwned'), \
             document.querySelectorAll('img[src=\"x\"]').length, \
             [...document.scripts].filter(s => !s.src.endsWith('/assets/page.js')).length]"
        ),
        serde_json::json!([null, 0, 0])
    );
}

/// The whole log opens from the failure's link.
fn check_log_opens(browser: &Browser) {
    let href = browser
        .eval("return [...document.querySelectorAll('#failure-groups a')].find(a => a.textContent === 'whole log').href")
        .as_str()
        .unwrap()
        .to_string();
    browser.goto(&href);
    let text = browser.eval("return document.body.innerText");
    let text = text.as_str().unwrap();
    assert!(text.contains("fetching the broken object"), "{text}");
    assert!(text.contains("<img src=x"), "{text}");
    assert_nothing_ran(browser);
}

/// An object's views as a grid with its caption, whose `<script>` is text.
fn check_objects_grid(browser: &Browser, url: &str, shot: &str) {
    browser.goto(&format!("{url}objects"));
    let caption = browser.wait_until(
        "the crate's caption",
        "const c = [...document.querySelectorAll('.object')].find(o => o.innerText.includes('crate'));
         return c ? c.querySelector('.caption').textContent : null;",
        Duration::from_secs(30),
    );
    assert!(caption.as_str().unwrap().contains("<script>"), "{caption}");
    browser.wait_until(
        "the first object's views to load",
        "const imgs = [...document.querySelector('.object').querySelectorAll('img')];
         return imgs.length === 8 && imgs.every(i => i.complete && i.naturalWidth > 0);",
        Duration::from_secs(30),
    );
    assert_nothing_ran(browser);
    browser.screenshot(shot);
}

/// `mvc ui` on the finished run's cache: the failure (recorded), the results with every
/// figure loaded, the objects, the history; nothing from the payloads runs.
fn check_cache_page(sb: &Sandbox, browser: &Browser) {
    let page = serve_cache(sb);
    let url = page.url.clone().unwrap();
    browser.goto(&url);
    let text = browser.wait_until(
        "the recorded failure",
        "const g = document.querySelector('#failure-groups');
         return g && g.innerText.includes('broken') && g.querySelector('pre.logtail') ? g.innerText : null;",
        Duration::from_secs(30),
    );
    assert!(
        text.as_str().unwrap().contains("<img src=x onerror="),
        "{text}"
    );
    assert_nothing_ran(browser);
    browser.screenshot("ui-run");
    browser.goto(&format!("{url}results"));
    let figures = browser.wait_until(
        "every figure to load",
        "const imgs = [...document.querySelectorAll('.figures img')];
         return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : null;",
        Duration::from_secs(30),
    );
    assert!(figures.as_u64().unwrap() >= 5, "{figures} figures");
    let note = browser.eval("return document.querySelector('.note').textContent");
    assert!(note.as_str().unwrap().contains("<img src=x"), "{note}");
    assert_nothing_ran(browser);
    browser.screenshot("ui-results");
    check_objects_grid(browser, &url, "ui-objects");
    browser.goto(&format!("{url}runs"));
    browser.screenshot("ui-history");
    assert_eq!(browser.console_errors(), Vec::<String>::new());
}

/// report.html, with the browser off the network: every figure shows, no payload runs, and
/// the file asks for nothing outside itself.
fn check_report_offline(sb: &Sandbox, browser: &Browser) {
    let report = sb.path().join("runs/page/report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    for bad in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "<script",
    ] {
        assert!(!html.contains(bad), "report.html holds {bad}");
    }
    browser.offline(true);
    browser.goto(&format!("file://{}", report.display()));
    let figures = browser.wait_until(
        "the report's figures",
        "const imgs = [...document.images];
         return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : null;",
        Duration::from_secs(30),
    );
    assert!(figures.as_u64().unwrap() >= 5);
    let resources = browser.eval(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'))",
    );
    assert_eq!(
        resources,
        serde_json::json!([]),
        "report.html fetched something"
    );
    assert_nothing_ran(browser);
    browser.screenshot("report-offline");
    browser.offline(false);
    assert_eq!(browser.console_errors(), Vec::<String>::new());
}

/// What no browser sends: paths that climb, ids that are not hex, ids that do not exist, and
/// writes; each gets 400, 404 or 405, with the page's security headers. The escaped payloads
/// are checked in the HTML itself.
#[test]
fn the_page_refuses_bad_ids_and_paths_and_escapes_what_it_shows() {
    let sb = page_sandbox();
    let ran = sb.mvc_env(&["run", "page.toml"], &[("MVC_SLOW", "0")]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let page = serve_cache(&sb);
    let url = page.url.clone().unwrap();
    let zeros = "0".repeat(64);
    let cases: &[(&str, u16)] = &[
        ("/blob/../../etc/passwd", 404),
        ("/blob/..%2F..%2Fetc%2Fpasswd", 400),
        ("/blob/zzzz", 400),
        (&format!("/blob/{zeros}"), 404),
        (&format!("/log/{}", "g".repeat(64)), 400),
        (&format!("/log/{zeros}"), 404),
        ("/task/abc", 400),
        (&format!("/task/{zeros}"), 404),
        (&format!("/task/{zeros}/output/0"), 404),
        (&format!("/task/{zeros}/output/x"), 400),
        ("/objects?stage=nope", 404),
        ("/compare?a=1&b=2", 404),
        ("/assets/../Cargo.toml", 404),
        ("/assets/secret.txt", 404),
        ("/assets/page.js", 200),
        ("/", 200),
    ];
    for (path, want) in cases {
        let (status, reply) = raw_get(&url, path);
        assert_eq!(status, *want, "GET {path}: {reply}");
        assert!(
            reply.contains("content-security-policy: default-src 'self'; script-src 'self'"),
            "GET {path} has no CSP: {reply}"
        );
    }
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(
            raw_http(&url, method, "/").0,
            405,
            "{method} / changes nothing"
        );
    }
    let (_, home) = raw_get(&url, "/");
    assert!(home.contains("&lt;img src=x onerror="), "{home}");
    assert!(!home.contains("<img src=x"), "{home}");
    let (_, objects) = raw_get(&url, "/objects");
    check_a_render_tasks_page(&url, &objects);
    assert!(objects.contains("&lt;script&gt;document.body"), "{objects}");
    assert!(!objects.contains("<script>document"), "{objects}");
}

/// A view's task page (linked from the objects grid): `mvc why`'s record, its output image
/// inline (and served as a PNG), and what changed (a new item: nothing before it).
fn check_a_render_tasks_page(url: &str, objects: &str) {
    let key = objects
        .split("href=\"/task/")
        .nth(1)
        .and_then(|s| s.get(..64))
        .expect("the grid links each view to its task");
    let (status, task) = raw_get(url, &format!("/task/{key}"));
    assert_eq!(status, 200, "{task}");
    for part in [
        "Key record",
        "Outputs",
        "What changed",
        "azimuth",
        "cached result of views/",
    ] {
        assert!(task.contains(part), "the task page shows {part}: {task}");
    }
    let image = task
        .split("<img src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the render shown inline");
    let (status, png) = raw_get(url, image);
    assert_eq!(status, 200);
    assert!(
        png.contains("content-type: image/png"),
        "{}",
        &png[..png.len().min(300)]
    );
}

/// An address in use, and an address off loopback without a token, stop the command before
/// anything runs, with a message that names the address.
#[test]
fn page_addresses_that_cannot_serve_are_refused_before_anything_runs() {
    let sb = page_sandbox();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ran = sb.mvc(&["run", "page.toml", "--ui", &addr]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr
            .contains(&format!("--ui {addr}: cannot listen there")),
        "{}",
        ran.stderr
    );
    assert!(
        !sb.path().join("runs").exists(),
        "nothing ran: {}",
        ran.stderr
    );
    let ran = sb.mvc(&["run", "page.toml", "--ui", "0.0.0.0:0"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr
            .contains("--ui 0.0.0.0:0: a page on an address other than loopback needs a token"),
        "{}",
        ran.stderr
    );
    let ran = sb.mvc(&["ui", "page.toml", "--listen", "0.0.0.0:0"]);
    assert!(
        ran.stderr
            .contains("--listen 0.0.0.0:0: a page on an address other than loopback needs a token"),
        "{}",
        ran.stderr
    );
    let ran = sb.mvc(&["ui", "--cache", "empty-cache"]);
    assert!(
        ran.stderr
            .contains("has no run that recorded its pipeline; give the pipeline file"),
        "{}",
        ran.stderr
    );
}

/// Readers that never read, and readers that come and go, do not hold the run back; `mvc ui`
/// on the cache the run holds says where its page is.
#[test]
fn slow_and_many_readers_never_hold_the_run_and_mvc_ui_points_to_its_page() {
    let sb = page_sandbox();
    let mut run = run_with_page(&sb, "0.05");
    let url = run.url.clone().unwrap();
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // 100 event streams that never read a byte, and 50 that disconnect at once.
    let stalled: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(&host).unwrap();
            write!(tcp, "GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
            tcp
        })
        .collect();
    for _ in 0..50 {
        let mut tcp = std::net::TcpStream::connect(&host).unwrap();
        write!(tcp, "GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    }
    let held = sb.mvc(&["ui", "page.toml", "--listen", "127.0.0.1:0"]);
    assert_ne!(held.code, Some(0));
    assert!(
        held.stderr
            .contains(&format!("that run's page is at {url}")),
        "{}",
        held.stderr
    );
    // A fresh reader still gets a snapshot at once.
    let (status, state) = raw_get(&url, "/state.json");
    assert_eq!(status, 200);
    assert!(state.contains("\"stages\""), "{state}");
    let ran = run.finish(Duration::from_secs(240));
    assert_eq!(
        ran.code,
        Some(1),
        "the run ends as without readers: {}",
        ran.stderr
    );
    assert!(ran.stderr.contains("report: 1/1 tasks"), "{}", ran.stderr);
    drop(stalled);
}

/// Two runs side by side: the parameter that changed, the stages that ran, the results.
#[test]
fn history_compares_two_runs_by_parameters_stages_and_results() {
    let sb = page_sandbox();
    assert_eq!(
        sb.mvc_env(&["run", "page.toml"], &[("MVC_SLOW", "0")]).code,
        Some(1)
    );
    let toml = std::fs::read_to_string(sb.path().join("page.toml")).unwrap();
    sb.write("page.toml", &toml.replace("echo done >", "echo finished >"));
    let second = sb.mvc_env(&["run", "page.toml", "--json"], &[("MVC_SLOW", "0")]);
    assert_eq!(
        second.json()["stages"]["slow"]["ran"],
        64,
        "{}",
        second.stderr
    );
    let page = serve_cache(&sb);
    let url = page.url.clone().unwrap();
    let (_, runs) = raw_get(&url, "/runs");
    let ids: Vec<&str> = runs
        .split("option value=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert!(ids.len() >= 4, "two runs in each select: {runs}");
    let (status, compare) = raw_get(&url, &format!("/compare?a={}&b={}", ids[1], ids[0]));
    assert_eq!(status, 200, "{compare}");
    assert!(
        compare.contains("stage.slow.cmd"),
        "the changed parameter: {compare}"
    );
    assert!(compare.contains("echo finished"), "{compare}");
    assert!(
        !compare.contains("stage.views.polar"),
        "only what changed: {compare}"
    );
    assert!(
        compare.contains("64 ran, 0 cached"),
        "slow ran again in B: {compare}"
    );
    assert!(
        compare.contains("eval_identity"),
        "the results compared: {compare}"
    );
    // Without the pipeline file, `mvc ui --cache DIR` serves the pipeline its last run read.
    drop(page);
    let by_cache = Background::start(
        &mut sb.command(&["ui", "--cache", "cache", "--listen", "127.0.0.1:0"]),
        true,
    );
    let (status, home) = raw_get(by_cache.url.as_ref().unwrap(), "/");
    assert_eq!(status, 200, "{home}");
    assert!(home.contains("No run holds this cache"), "{home}");
    assert!(home.contains(">slow<"), "the last run's stages: {home}");
}

/// Off loopback the page needs the token and serves HTTPS: a browser without the token gets
/// 401; `?token=` once sets a cookie (and drops the token from the address); the cookie then
/// opens every page. A wrong token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_page_asks_for_the_token_once_over_tls() {
    let sb = page_sandbox();
    let ran = sb.mvc_env(&["run", "page.toml"], &[("MVC_SLOW", "0")]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let token = "a-token-of-sixteen-or-more";
    sb.write("token", token);
    let page = Background::start(
        &mut sb.command(&[
            "ui",
            "page.toml",
            "--listen",
            "0.0.0.0:0",
            "--token-file",
            "token",
        ]),
        true,
    );
    let url = page.url.clone().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let base = format!("https://127.0.0.1:{port}");
    let fingerprint = page
        .fingerprint
        .clone()
        .expect("a self-signed certificate's fingerprint");
    let tls = mvc::remote::tls::pinned_client(
        mvc::remote::tls::Fingerprint::parse(&fingerprint).unwrap(),
        Default::default(),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let get = |path: String, cookie: Option<String>| {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let refused = get("/".into(), None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("content-security-policy"));
    let wrong = get("/?token=not-the-token-at-all".into(), None)
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let given = get(format!("/results?token={token}"), None).await.unwrap();
    assert_eq!(given.status(), 303);
    assert_eq!(given.headers()["location"], "/results");
    let cookie = given.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let opened = get("/results".into(), Some(pair.clone())).await.unwrap();
    assert_eq!(opened.status(), 200);
    assert!(opened.text().await.unwrap().contains("eval_identity"));
    let bearer = http
        .get(format!("{base}/state.json"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
}
