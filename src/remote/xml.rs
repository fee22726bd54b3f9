//! A tiny XML element tree over quick-xml's pull parser, shared by the OSS and S3 response decoders.
//!
//! Why a tree and not serde: answers are small (at most 1000 entries), and a tree makes the rules both
//! protocols need easy to keep everywhere at once: element names are compared by *local* name (a namespace,
//! declared or prefixed, never matters), unknown elements are ignored, order does not matter, and repeated
//! elements may interleave. Anything that is not well-formed XML with the expected root is an error string;
//! the clients turn it into [`crate::remote::RemoteError::BadResponse`].

use std::time::SystemTime;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

use crate::timefmt;

/// Nesting deeper than this is not an OSS or S3 document (and would only cost stack and memory).
const MAX_DEPTH: usize = 32;

/// One element: its local name, its text (entities resolved, CDATA included) and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The raw text of a child element (not trimmed: keys may start or end with spaces).
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str, String> {
        self.text_of(name).ok_or_else(|| format!("<{}> has no <{name}>", self.name))
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.text_of(name).map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) => t.parse().map(Some).map_err(|_| format!("<{name}> is not a number: {:?}", shorten(t))),
        }
    }

    pub(crate) fn required_number<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        self.number(name)?.ok_or_else(|| format!("<{}> has no <{name}>", self.name))
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.text_of(name).is_some_and(|t| t.trim().eq_ignore_ascii_case("true"))
    }

    pub(crate) fn date(&self, name: &str) -> Option<SystemTime> {
        self.text_of(name).and_then(timefmt::parse_xml_date)
    }

    /// A trimmed, non-empty text.
    pub(crate) fn nonempty(&self, name: &str) -> Option<&str> {
        self.text_of(name).map(str::trim).filter(|t| !t.is_empty())
    }
}

pub(crate) fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Parse a whole document into its root element.
pub fn parse(body: &[u8]) -> Result<Element, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;

    fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) -> Result<(), String> {
        match stack.last_mut() {
            Some(parent) => parent.children.push(el),
            None if root.is_none() => *root = Some(el),
            None => return Err("more than one root element".into()),
        }
        Ok(())
    }
    fn local(name: quick_xml::name::LocalName<'_>) -> String {
        name.as_ref().to_string()
    }

    loop {
        let event = reader.read_event().map_err(|e| format!("not well-formed XML: {e}"))?;
        match event {
            Event::Start(e) => {
                if root.is_some() && stack.is_empty() {
                    return Err("more than one root element".into());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err("elements nested too deeply".into());
                }
                stack.push(Element { name: local(e.local_name()), ..Default::default() });
            }
            Event::Empty(e) => {
                attach(&mut stack, &mut root, Element { name: local(e.local_name()), ..Default::default() })?
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("unbalanced end tag")?;
                attach(&mut stack, &mut root, el)?;
            }
            Event::Text(t) => match stack.last_mut() {
                Some(top) => top.text.push_str(&t.xml10_content()),
                None if t.xml10_content().trim().is_empty() => {}
                None => return Err("text outside the root element".into()),
            },
            Event::CData(c) => match stack.last_mut() {
                Some(top) => top.text.push_str(&c.xml10_content()),
                None => return Err("CDATA outside the root element".into()),
            },
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(|e| format!("bad character reference: {e}"))?
                } else {
                    None
                };
                let name = r.xml10_content();
                let piece = match resolved {
                    Some(ch) => ch.to_string(),
                    None => resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity &{};", shorten(&name)))?
                        .to_string(),
                };
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&piece),
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    root.ok_or_else(|| "no XML element in the body".into())
}

/// Parse a document and check its root element's name.
pub fn parse_root(body: &[u8], expected: &str) -> Result<Element, String> {
    let root = parse(body)?;
    if root.name != expected {
        return Err(format!("expected an XML <{expected}> document, got <{}>", shorten(&root.name)));
    }
    Ok(root)
}
