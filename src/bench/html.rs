//! `report.html`: a run's or a suite's `report.md` as one self-contained page — tables and
//! plots embedded (the SVGs inline), no network, no other file needed to read it.

use std::path::Path;

use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag, TagEnd};

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;\
padding:0 1em;color:#222}pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:13px;\
line-height:1.35}code{font-family:ui-monospace,monospace}table{border-collapse:collapse;\
margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}\
th{background:#f0f0f0}figure{margin:1.5em 0}figure svg{max-width:100%;height:auto}\
figcaption{color:#555;font-size:13px}.missing{color:#a00}";

/// Writes `dir/report.html` from `markdown` (whose images name files in `dir`).
pub fn write(dir: &Path, markdown: &str, title: &str) -> std::io::Result<()> {
    std::fs::write(dir.join("report.html"), render(dir, markdown, title))
}

/// The page: `markdown` as HTML, each local SVG image inlined in a figure with its alt
/// text as caption; an image that cannot be read says so in its place.
pub fn render(dir: &Path, markdown: &str, title: &str) -> String {
    let mut events = Vec::new();
    let mut image: Option<(String, String)> = None;
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match (event, &mut image) {
            (Event::Start(Tag::Image { dest_url, .. }), _) => {
                image = Some((dest_url.to_string(), String::new()));
            }
            (Event::End(TagEnd::Image), Some((dest, alt))) => {
                let figure = figure(dir, dest, alt);
                events.push(Event::Html(CowStr::from(figure)));
                image = None;
            }
            (Event::Text(text) | Event::Code(text), Some((_, alt))) => alt.push_str(&text),
            (_, Some(_)) => {}
            (event, None) => events.push(event),
        }
    }
    let mut body = String::new();
    html::push_html(&mut body, events.into_iter());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

fn figure(dir: &Path, dest: &str, alt: &str) -> String {
    let local = !dest.contains("://") && !dest.starts_with('/') && !dest.contains("..");
    let svg = local
        .then(|| std::fs::read_to_string(dir.join(dest)).ok())
        .flatten()
        .filter(|_| dest.ends_with(".svg"));
    match svg {
        Some(svg) => {
            // The XML declaration is not allowed inside an HTML document.
            let svg = match svg.find("<svg") {
                Some(at) => &svg[at..],
                None => svg.as_str(),
            };
            format!(
                "<figure>{svg}<figcaption>{}</figcaption></figure>\n",
                escape(alt)
            )
        }
        None => format!(
            "<p class=\"missing\">[{}: {} could not be embedded]</p>\n",
            escape(alt),
            escape(dest)
        ),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_tables_and_svgs_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("plot.svg"),
            "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>",
        )
        .unwrap();
        let md = "# Run <1>\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n```\np50 3 us\n```\n\n\
                  ![latency by percentile](plot.svg)\n\n![gone](nope.svg)\n\n![remote](http://x/y.svg)\n";
        let page = render(dir.path(), md, "3 replicas & <loopback>");
        assert!(page.contains("<title>3 replicas &amp; &lt;loopback&gt;</title>"));
        assert!(page.contains("<table>") && page.contains("<td>2</td>"));
        assert!(page.contains("<pre><code>p50 3 us"));
        assert!(page.contains("<figure><svg xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>"));
        assert!(page.contains("<figcaption>latency by percentile</figcaption>"));
        assert!(!page.contains("<?xml"));
        assert!(page.contains("[gone: nope.svg could not be embedded]"));
        assert!(page.contains("[remote: http://x/y.svg could not be embedded]"));
        // Self-contained: nothing is fetched.
        assert!(!page.contains("<img") && !page.contains("src="));
    }
}
