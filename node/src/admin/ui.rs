//! The admin page, served at `/ui/` on the admin port: a static page (HTML, a script, a
//! stylesheet and the uPlot charting library, all compiled into the binary) that reads
//! the admin API of the node serving it with the admin token the operator types in.
//! The page holds no data: serving it needs no token; every request it makes does.

/// The page's files: path under `/ui/`, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("ui/vendor/uPlot.min.css"),
    ),
];

/// The page's one dynamic file, under `/ui/`: `{"token_required": bool}`, whether the
/// node has admin tokens (so the page asks for one before calling the API).
pub const AUTH: &str = "auth.json";

/// What the page may load and do: only from this origin, never framed.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// The file at `name` (the path after `/ui/`; empty for the page): its content type and
/// content.
pub fn file(name: &str) -> Option<(&'static str, &'static str)> {
    FILES
        .iter()
        .find(|(path, _, _)| *path == name)
        .map(|(_, kind, content)| (*kind, *content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_everything_it_loads_are_served() {
        let (kind, page) = file("").expect("the page");
        assert!(kind.starts_with("text/html"));
        for asset in [
            "/ui/app.js",
            "/ui/style.css",
            "/ui/uPlot.iife.min.js",
            "/ui/uPlot.min.css",
        ] {
            assert!(page.contains(asset), "the page loads {asset}");
            assert!(file(&asset["/ui/".len()..]).is_some(), "{asset} is served");
        }
        assert!(file("../secrets").is_none());
        assert!(file("nope.js").is_none());
    }
}
