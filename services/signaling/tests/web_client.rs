//! The JavaScript client is a set of ES modules loaded without a build step (`web/client.js`
//! imports `web/client/*.js`), so every module it imports must be served, or the demo page and
//! every `import ... from '/client.js'` break. A real signaling node serves the demo pages and
//! `/client.js`; starting from them, every module imported (transitively, by the static
//! `import ... from './...'` and `export ... from './...'` statements) must answer 200 with a
//! JavaScript content type and the file's current text.

use registry::memory::MemoryStore;
use registry::Store;
use signaling::{serve_with_store, Ready, SignalingConfig};
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// The pages that import the client (their inline `<script type="module">`).
const PAGES: &[&str] = &["/", "/turn-test"];

async fn start_node(shutdown: &CancellationToken) -> Ready {
    let mut cfg = SignalingConfig::with_defaults(&Default::default());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.metrics = "127.0.0.1:0".parse().unwrap();
    cfg.node_id = "n1".into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        serve_with_store(cfg, store, shutdown, move |r| {
            let _ = tx.send(r.clone());
        })
        .await
        .unwrap();
    });
    timeout(WAIT, rx).await.unwrap().unwrap()
}

/// An HTTP answer: status, headers (names lowercase), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh HTTP/1.1 connection (`Connection: close`, so the body is the rest
/// of the stream).
async fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line in {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")),
        "GET {path}: chunked answer (this test reads a plain body)"
    );
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The module specifiers `source` (a JavaScript module, or an HTML page with inline modules)
/// imports statically: `import ... from 'x'`, `import 'x'`, `export {...} from 'x'` and
/// `export * from 'x'`, a statement possibly spread over lines (`import {` ... `} from 'x';`).
/// Comments (lines starting with `//` or `*`) and dynamic `import(...)` are not statements here.
fn static_imports(source: &str) -> Vec<String> {
    let mut specifiers = Vec::new();
    let mut statement: Option<String> = None;
    for line in source.lines() {
        let t = line.trim();
        match statement.as_mut() {
            Some(s) => {
                s.push(' ');
                s.push_str(t);
            }
            None => {
                let starts = [
                    "import ", "import{", "import'", "import\"", "export {", "export{", "export *",
                ]
                .iter()
                .any(|p| t.starts_with(p));
                if !starts {
                    continue;
                }
                statement = Some(t.to_string());
            }
        }
        let s = statement.as_deref().unwrap();
        if let Some(spec) = specifier(s) {
            specifiers.push(spec);
            statement = None;
        } else if s.ends_with(';') {
            // `export { a, b };`: nothing imported.
            statement = None;
        }
    }
    specifiers
}

/// The `'x'` of a complete `import ... from 'x'` / `import 'x'` / `export ... from 'x'`.
fn specifier(statement: &str) -> Option<String> {
    let s = statement.trim_end_matches(';').trim_end();
    let quote = s.chars().last().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &s[..s.len() - 1];
    let open = inner.rfind(quote)?;
    let before = inner[..open].trim_end();
    (before.ends_with(" from") || before.ends_with("}from") || before == "import")
        .then(|| inner[open + 1..].to_string())
}

/// The URL path `spec` names when imported by the document at URL path `base`.
fn resolve(base: &str, spec: &str) -> String {
    let joined = if spec.starts_with('/') {
        spec.to_string()
    } else if spec.starts_with("./") || spec.starts_with("../") {
        format!("{}{spec}", &base[..=base.rfind('/').unwrap()])
    } else {
        panic!("{base} imports {spec:?}: not a path this server serves (bare or full URL)");
    };
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

#[test]
fn the_import_parser_finds_static_imports_only() {
    let src = "// import { x } from './comment.js';\n\
               /**\n * import { y } from './doc.js';\n */\n\
               import { a, b } from './a.js';\n\
               import {\n  c,\n  d,\n} from \"../b.js\";\n\
               import './side.js';\n\
               export { e } from './e.js';\n\
               export * from '/f.js';\n\
               export { g };\n\
               export class H {}\n\
               const i = await import('./dynamic.js');\n";
    assert_eq!(
        static_imports(src),
        ["./a.js", "../b.js", "./side.js", "./e.js", "/f.js"]
    );
    assert_eq!(resolve("/client.js", "./client/a.js"), "/client/a.js");
    assert_eq!(resolve("/client/a.js", "./b.js"), "/client/b.js");
    assert_eq!(resolve("/client/a.js", "../client.js"), "/client.js");
    assert_eq!(resolve("/turn-test", "./client.js"), "/client.js");
    assert_eq!(resolve("/", "/client.js"), "/client.js");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_module_the_client_imports_is_served() {
    let shutdown = CancellationToken::new();
    let ready = start_node(&shutdown).await;
    let addr = ready.http;

    // The roots: the pages' inline modules, and the public entry itself.
    let mut queue: VecDeque<(String, String)> = VecDeque::new();
    queue.push_back(("/client.js".into(), "(the public entry)".into()));
    for page in PAGES {
        let a = get(addr, page).await;
        assert_eq!(a.status, 200, "GET {page}");
        for spec in static_imports(&a.body) {
            queue.push_back((resolve(page, &spec), page.to_string()));
        }
    }

    let mut served = BTreeSet::new();
    while let Some((path, importer)) = queue.pop_front() {
        if !served.insert(path.clone()) {
            continue;
        }
        let a = get(addr, &path).await;
        assert_eq!(
            a.status, 200,
            "GET {path} (imported by {importer}): not served; is it in http::CLIENT_MODULES?"
        );
        assert_eq!(
            a.header("content-type"),
            Some("text/javascript; charset=utf-8"),
            "GET {path}"
        );
        let file = web_dir().join(path.trim_start_matches('/'));
        let on_disk = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{path} (imported by {importer}): {}: {e}", file.display()));
        assert!(
            a.body == on_disk,
            "GET {path} does not serve {}",
            file.display()
        );
        for spec in static_imports(&a.body) {
            queue.push_back((resolve(&path, &spec), path.clone()));
        }
    }

    // The walk found the modules (it cannot pass by finding no imports at all)...
    assert!(
        served.iter().filter(|p| p.starts_with("/client/")).count() >= 2,
        "{served:?}"
    );
    // ...and every module on disk is one of them: no file of web/client/ is left unserved or
    // unused.
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(web_dir().join("client")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".js") {
            on_disk.insert(format!("/client/{name}"));
        }
    }
    let reached: BTreeSet<String> = served
        .iter()
        .filter(|p| p.starts_with("/client/"))
        .cloned()
        .collect();
    assert_eq!(
        reached, on_disk,
        "modules reached from /client.js vs web/client/*.js"
    );

    // A module that does not exist is a 404, not a catch-all answer.
    assert_eq!(get(addr, "/client/nope.js").await.status, 404);
    shutdown.cancel();
}
