//! XML in and out, the way OSS and the SDKs expect it.
//!
//! Out: [`XmlWriter`] builds bodies with the `<?xml … UTF-8?>` prolog and **no namespace** (py-oss2 compares
//! root tag names literally). Text is escaped for `&`, `<` and `>` only; ETags keep their literal quotes
//! (`<ETag>"…"</ETag>`), as OSS writes them.
//!
//! In: [`parse`] turns a small request body (CompleteMultipartUpload, Delete) into an element tree. It is
//! written on quick-xml's event reader rather than serde so that text is kept byte for byte (no trimming of a
//! key's spaces) and entity references (`&quot;`, `&#34;` from Go's encoder) are resolved exactly.

use quick_xml::Reader;
use quick_xml::events::Event;

/// An XML body under construction.
pub struct XmlWriter {
    out: String,
    open: Vec<&'static str>,
}

impl XmlWriter {
    pub fn new(root: &'static str) -> Self {
        let mut out = String::with_capacity(512);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let mut w = XmlWriter { out, open: Vec::new() };
        w.start(root);
        w
    }

    pub fn start(&mut self, name: &'static str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.open.push(name);
        self
    }

    pub fn end(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
        self
    }

    /// `<name>text</name>`, escaped.
    pub fn elem(&mut self, name: &str, text: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        escape_into(&mut self.out, text);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.end();
        }
        self.out
    }
}

pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    escape_into(&mut s, text);
    s
}

/// An element of a parsed request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    /// Concatenated text directly inside this element (entities resolved, nothing trimmed).
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Why a body is not acceptable XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(String);

const MAX_DEPTH: usize = 16;

/// Parse a whole document into its root element. Namespaces are ignored (local names are kept).
pub fn parse(body: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError("not UTF-8".into()))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let event = reader.read_event().map_err(|e| XmlError(e.to_string()))?;
        match event {
            Event::Start(e) => {
                if root.is_some() {
                    return Err(XmlError("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError("nested too deeply".into()));
                }
                let name = e.local_name().as_ref().to_string();
                stack.push(Element { name, ..Element::default() });
            }
            Event::Empty(e) => {
                let name = e.local_name().as_ref().to_string();
                let el = Element { name, ..Element::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(XmlError("content after the root element".into())),
                }
            }
            Event::End(e) => {
                let name = e.local_name().as_ref().to_string();
                let el = stack.pop().ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                if el.name != name {
                    return Err(XmlError(format!("end tag {name} does not close {}", el.name)));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(XmlError("text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                let s = c.into_inner();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&s),
                    None => return Err(XmlError("CDATA outside the root element".into())),
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| XmlError(e.to_string()))? {
                    Some(c) => c,
                    None => match r.xml10_content().as_ref() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(XmlError(format!("unknown entity &{other};"))),
                    },
                };
                match stack.last_mut() {
                    Some(el) => el.text.push(resolved),
                    None => return Err(XmlError("reference outside the root element".into())),
                }
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("unclosed element".into()));
    }
    root.ok_or_else(|| XmlError("empty document".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_escapes_and_closes() {
        let mut w = XmlWriter::new("Root");
        w.elem("Key", "a&b<c>\"d\"").start("Inner").elem("X", "1");
        let s = w.finish();
        assert_eq!(
            s,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Root><Key>a&amp;b&lt;c&gt;\"d\"</Key><Inner><X>1</X></Inner></Root>"
        );
    }

    #[test]
    fn parses_entities_and_keeps_spaces() {
        let doc = br#"<?xml version="1.0"?><CompleteMultipartUpload xmlns="x"><Part><PartNumber>1</PartNumber><ETag>&quot;AB&#34;</ETag></Part><Part><ETag> k &amp; v </ETag></Part></CompleteMultipartUpload>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "CompleteMultipartUpload");
        let parts: Vec<_> = root.children_named("Part").collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].child_text("ETag"), Some("\"AB\""));
        assert_eq!(parts[1].child_text("ETag"), Some(" k & v "));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b""[..], b"<a>", b"<a></b>", b"not xml", b"<a/><b/>", b"<a>&bogus;</a>", b"\xff\xfe"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
