//! The dashboard's static files, embedded at build time (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

/// The page served when the binary was built without the dashboard.
const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>DRMQ</title>\
<body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
<h1>DRMQ</h1><p>This broker was built without its dashboard. \
Build it with <code>make build</code> (or <code>npm ci &amp;&amp; npm run build</code> \
in <code>dashboard-web/</code>, then <code>cargo build</code>).</p>\
<p>The telemetry is served all the same: <a href=\"/metrics\">/metrics</a>, \
<a href=\"/api/status\">/api/status</a>, <a href=\"/api/cluster\">/api/cluster</a>, \
and the WebSocket <code>/ws</code>.</p>";

/// Whether the dashboard was embedded.
pub fn built() -> bool {
    FILES.iter().any(|(p, _)| *p == "/index.html")
}

/// The file at URL `path` (`/` is `/index.html`) and its content type.
pub fn file(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    if path == "/index.html" && !built() {
        return Some(("text/html; charset=utf-8", NOT_BUILT.as_bytes()));
    }
    let (_, bytes) = FILES.iter().find(|(p, _)| *p == path)?;
    Some((content_type(path), bytes))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_always_a_page_and_unknown_files_are_not_found() {
        let (ct, body) = file("/").unwrap();
        assert!(ct.starts_with("text/html"));
        assert!(!body.is_empty());
        assert!(file("/no-such-file.js").is_none());
        assert_eq!(
            content_type("/assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
    }
}
