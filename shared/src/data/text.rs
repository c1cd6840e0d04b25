//! Small text helpers for item meta: HTML entity decoding, whitespace cleanup, and turning
//! description fields (a string or a list of strings) into one string.
//!
//! Amazon titles, brands and categories carry HTML entities left over from scraping
//! (`Tom Clancy&#39;s`, `Mario &amp; Sonic`). [`clean`] decodes them, collapses runs of whitespace
//! (including the no-break space that `&nbsp;` decodes to) into one space and trims the ends.
//!
//! Entity rules ([`decode_entities`]):
//! - named: `&amp; &quot; &apos; &lt; &gt; &nbsp;`, plus the Latin-1 named entities
//!   (`&reg; &eacute; &copy; ...`) and common typographic ones (`&trade; &ndash; &mdash;
//!   &lsquo; &rsquo; &ldquo; &rdquo; &hellip; &bull; &euro;`), which are frequent in Amazon titles;
//! - numeric: `&#NNN;` and `&#xHH;` (any case of `x` and of the hex digits);
//! - the trailing `;` is required; anything else (an unknown name, a missing `;`, a number that is
//!   not a Unicode scalar value or is NUL) is left exactly as it was;
//! - decoding is a single pass: `&amp;amp;` becomes `&amp;`, not `&`.

use serde_json::Value;
use std::borrow::Cow;

/// Decodes HTML entities (see the module docs for which ones). Borrows when there is no `&`.
pub fn decode_entities(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find('&') else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..first]);
    let mut rest = &s[first..];
    // Invariant: `rest` starts with '&'.
    loop {
        match decode_one(rest) {
            Some((ch, consumed)) => {
                out.push(ch);
                rest = &rest[consumed..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
        match rest.find('&') {
            Some(next) => {
                out.push_str(&rest[..next]);
                rest = &rest[next..];
            }
            None => {
                out.push_str(rest);
                return Cow::Owned(out);
            }
        }
    }
}

/// Longest entity body we look at (`&thetasym;` is the longest HTML 4 name).
const MAX_ENTITY_BODY: usize = 10;

/// Decodes the entity at the start of `s` (which starts with `&`): the character and the number of
/// bytes the entity spans, `;` included.
fn decode_one(s: &str) -> Option<(char, usize)> {
    let bytes = s.as_bytes();
    let window = &bytes[1..bytes.len().min(MAX_ENTITY_BODY + 2)];
    let semi = window.iter().position(|&b| b == b';')?;
    let body = &s[1..1 + semi];
    let ch = if let Some(num) = body.strip_prefix('#') {
        let code = if let Some(hex) = num.strip_prefix(['x', 'X']) {
            parse_digits(hex, 16)?
        } else {
            parse_digits(num, 10)?
        };
        match char::from_u32(code) {
            Some('\0') | None => return None,
            Some(c) => c,
        }
    } else {
        named_entity(body)?
    };
    Some((ch, semi + 2))
}

fn parse_digits(digits: &str, radix: u32) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let mut value: u32 = 0;
    for c in digits.chars() {
        value = value.checked_mul(radix)?.checked_add(c.to_digit(radix)?)?;
    }
    Some(value)
}

fn named_entity(name: &str) -> Option<char> {
    let c = match name {
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        "lt" => '<',
        "gt" => '>',
        "nbsp" => '\u{a0}',
        // Typographic entities outside Latin-1 that Amazon titles use.
        "trade" => '™',
        "ndash" => '–',
        "mdash" => '—',
        "lsquo" => '‘',
        "rsquo" => '’',
        "sbquo" => '‚',
        "ldquo" => '“',
        "rdquo" => '”',
        "bdquo" => '„',
        "hellip" => '…',
        "bull" => '•',
        "euro" => '€',
        "dagger" => '†',
        "Dagger" => '‡',
        "permil" => '‰',
        "lsaquo" => '‹',
        "rsaquo" => '›',
        "prime" => '′',
        "Prime" => '″',
        "OElig" => 'Œ',
        "oelig" => 'œ',
        "Scaron" => 'Š',
        "scaron" => 'š',
        "Yuml" => 'Ÿ',
        "fnof" => 'ƒ',
        "circ" => 'ˆ',
        "tilde" => '˜',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "thinsp" => '\u{2009}',
        "zwnj" => '\u{200c}',
        "zwj" => '\u{200d}',
        "larr" => '←',
        "rarr" => '→',
        "uarr" => '↑',
        "darr" => '↓',
        "harr" => '↔',
        "hearts" => '♥',
        "spades" => '♠',
        "clubs" => '♣',
        "diams" => '♦',
        "infin" => '∞',
        "ne" => '≠',
        "le" => '≤',
        "ge" => '≥',
        "minus" => '−',
        "asymp" => '≈',
        _ => return latin1_entity(name),
    };
    Some(c)
}

/// The HTML named entities for U+00A1..=U+00FF, in code point order.
const LATIN1_NAMES: [&str; 95] = [
    "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf", "laquo",
    "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro", "para",
    "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest", "Agrave",
    "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute", "Ecirc",
    "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute", "Ocirc",
    "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute", "THORN",
    "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil", "egrave",
    "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde", "ograve",
    "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc", "uuml",
    "yacute", "thorn", "yuml",
];

fn latin1_entity(name: &str) -> Option<char> {
    let index = LATIN1_NAMES.iter().position(|&n| n == name)?;
    char::from_u32(0xA1 + index as u32)
}

/// Collapses every run of whitespace (Unicode `White_Space`, so the no-break space too) into one
/// ASCII space and trims both ends. Borrows when nothing changes.
pub fn collapse_whitespace(s: &str) -> Cow<'_, str> {
    let trimmed = s.trim();
    let clean = {
        let mut prev_space = false;
        trimmed.chars().all(|c| {
            let ok = if c.is_whitespace() {
                c == ' ' && !prev_space
            } else {
                true
            };
            prev_space = c.is_whitespace();
            ok
        })
    };
    if clean {
        return Cow::Borrowed(trimmed);
    }
    let mut out = String::with_capacity(trimmed.len());
    let mut in_space = false;
    for c in trimmed.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
                in_space = true;
            }
        } else {
            out.push(c);
            in_space = false;
        }
    }
    Cow::Owned(out)
}

/// Decodes entities, collapses whitespace and trims; `None` when nothing is left.
pub fn clean(s: &str) -> Option<String> {
    let decoded = decode_entities(s);
    let collapsed = collapse_whitespace(&decoded);
    if collapsed.is_empty() {
        None
    } else {
        Some(collapsed.into_owned())
    }
}

/// Joins the cleaned, non-empty parts with one space; `None` when no part has text.
pub fn join_clean<'a>(parts: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut out = String::new();
    for part in parts {
        if let Some(text) = clean(part) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&text);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A description-like field as one string: a string, or a list of strings (nested lists are
/// flattened, non-string entries ignored), each part cleaned and joined with a space. `None` for
/// anything else and when no text is left.
pub fn text_of(value: &Value) -> Option<String> {
    fn collect<'a>(value: &'a Value, parts: &mut Vec<&'a str>) {
        match value {
            Value::String(s) => parts.push(s),
            Value::Array(items) => items.iter().for_each(|item| collect(item, parts)),
            _ => {}
        }
    }
    let mut parts = Vec::new();
    collect(value, &mut parts);
    join_clean(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_basic_entities() {
        assert_eq!(
            decode_entities(
                "Mario &amp; Sonic &quot;Olympic&quot; Tom Clancy&#39;s &apos;x&apos; &lt;b&gt;"
            ),
            "Mario & Sonic \"Olympic\" Tom Clancy's 'x' <b>"
        );
        assert_eq!(decode_entities("a&nbsp;b"), "a\u{a0}b");
    }

    #[test]
    fn decodes_numeric_entities() {
        assert_eq!(decode_entities("&#233;&#xE9;&#XE9;&#x1F600;"), "ééé😀");
        assert_eq!(decode_entities("&#38;amp;"), "&amp;");
    }

    #[test]
    fn decodes_latin1_and_typographic_names() {
        assert_eq!(
            decode_entities(
                "Pok&eacute;mon&reg; Halo&trade; 3 &ndash; &ldquo;x&rdquo; &copy;&yuml;&iexcl;"
            ),
            "Pokémon® Halo™ 3 – “x” ©ÿ¡"
        );
    }

    #[test]
    fn leaves_unknown_and_broken_entities_alone() {
        for s in [
            "AT&T",
            "a & b",
            "&bogus;",
            "&amp",
            "&#;",
            "&#x;",
            "&#12a;",
            "&#0;",
            "&#xD800;",
            "&#99999999999;",
            "&verylongentityname;",
            "&",
            "x&",
        ] {
            assert_eq!(decode_entities(s), s, "{s}");
        }
        assert_eq!(decode_entities("&bogus; &amp; &amp"), "&bogus; & &amp");
        assert_eq!(decode_entities("&amp;amp;"), "&amp;");
    }

    #[test]
    fn borrows_when_nothing_to_do() {
        assert!(matches!(decode_entities("plain title"), Cow::Borrowed(_)));
        assert!(matches!(
            collapse_whitespace("plain title"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            collapse_whitespace("  plain title \n"),
            Cow::Borrowed("plain title")
        ));
    }

    #[test]
    fn collapses_whitespace() {
        assert_eq!(collapse_whitespace("  a \t\n b\u{a0}\u{a0}c  "), "a b c");
        assert_eq!(collapse_whitespace("a\tb"), "a b");
        assert_eq!(collapse_whitespace(" \n "), "");
    }

    #[test]
    fn clean_decodes_then_collapses() {
        assert_eq!(
            clean("  Mario&nbsp;&amp;\n Sonic "),
            Some("Mario & Sonic".to_string())
        );
        assert_eq!(clean(" &nbsp; "), None);
        assert_eq!(clean(""), None);
    }

    #[test]
    fn text_of_strings_and_lists() {
        assert_eq!(text_of(&json!("  one  ")), Some("one".to_string()));
        assert_eq!(
            text_of(&json!(["one", " ", "two &amp; three", 5, ["four"]])),
            Some("one two & three four".to_string())
        );
        assert_eq!(text_of(&json!([])), None);
        assert_eq!(text_of(&json!(["", "  "])), None);
        assert_eq!(text_of(&json!("")), None);
        assert_eq!(text_of(&json!(null)), None);
        assert_eq!(text_of(&json!(3)), None);
        assert_eq!(text_of(&json!({"a": "b"})), None);
    }

    #[test]
    fn join_clean_skips_empty_parts() {
        assert_eq!(join_clean(["", "a", " b "]), Some("a b".to_string()));
        assert_eq!(join_clean(Vec::<&str>::new()), None);
    }
}
