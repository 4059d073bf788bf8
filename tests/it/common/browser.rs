//! A real browser for the page's tests: Debian's headless Chromium, driven over WebDriver by
//! Debian's chromedriver (plain JSON over HTTP, spoken here with reqwest). Screenshots go to
//! `target/tmp/ui-screenshots/` for a person to look at.

use super::free_port;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Where the tests' screenshots are saved.
pub fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and one headless Chromium session (a fresh profile); `None`, after
    /// saying why, when they are not installed and `MVC_REQUIRE_BROWSER` is not set (CI sets
    /// it: there a missing browser fails the test).
    pub fn start(test: &str) -> Option<Browser> {
        for tool in ["chromedriver", "chromium"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success();
            let why = format!(
                "{tool} is missing: the page's browser tests need Debian's chromium and \
                 chromium-driver (.ci/run installs them)"
            );
            if !found {
                assert!(std::env::var_os("MVC_REQUIRE_BROWSER").is_none(), "{why}");
                eprintln!("SKIPPED: {test}: {why}");
                return None;
            }
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            runtime,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            driver,
            _profile: profile,
        };
        browser.wait_ready();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1300,1500", "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", browser._profile.path().display())]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let session = browser.call("POST", "/session", Some(caps));
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        Some(browser)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.runtime.block_on(async {
                let r = self
                    .http
                    .get(format!("{}/status", self.base))
                    .send()
                    .await
                    .ok()?;
                serde_json::from_slice::<Value>(&r.bytes().await.ok()?).ok()
            });
            if ready.is_some_and(|v| v["value"]["ready"] == json!(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let reply: Value = self.runtime.block_on(async {
            let req = match method {
                "GET" => self.http.get(&url),
                "DELETE" => self.http.delete(&url),
                _ => self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&body.unwrap_or(json!({}))).unwrap()),
            };
            let bytes = req
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
                .bytes()
                .await
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        });
        if reply["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns something truthy; returns it.
    pub fn wait_until(&self, what: &str, script: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(script);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a screenshot as `NAME.png` in [`screenshot_dir`].
    pub fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine as _;
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// The console's errors since the last call (chromedriver's browser log, SEVERE).
    pub fn console_errors(&self) -> Vec<String> {
        let log = self.call("POST", "/se/log", Some(json!({ "type": "browser" })));
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == json!("SEVERE"))
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Cuts the browser off the network (or lets it back).
    pub fn offline(&self, offline: bool) {
        self.call(
            "POST",
            "/chromium/network_conditions",
            Some(json!({ "network_conditions": {
                "offline": offline, "latency": 0,
                "download_throughput": 0, "upload_throughput": 0 } })),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(async {
            self.http
                .delete(&self.base)
                .timeout(Duration::from_secs(10))
                .send()
                .await
        });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
