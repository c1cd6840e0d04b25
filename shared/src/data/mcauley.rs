//! McAuley-lab Amazon raw files, 2014 and 2018 releases: review JSON lines and item meta lines.
//!
//! Reviews (`reviews_*.json.gz` 2014, `*_5.json.gz` / `<Category>.json.gz` 2018) are strict JSON,
//! one object per line; only `reviewerID`, `asin` and `unixReviewTime` (seconds; any JSON number
//! is accepted) are read, through a borrowed struct, so the long review texts are skipped, not
//! copied. Every review is pushed, duplicates included (deduplication is preprocessing's job).
//!
//! Meta lines are detected one by one:
//! - 2018 (`meta_*.json.gz`): JSON with `asin`, `title`, `brand`, `category` (a list of strings,
//!   most general first), `description` (a list of strings or a string) and `main_cat`;
//! - 2014 (`meta_*.json.gz`): a Python dict literal (see [`super::pyliteral`]) with `asin`,
//!   `title`, `brand`, `categories` (a list of category paths, of which the first is taken) and
//!   `description` (a string).
//!
//! A line whose first key is not double-quoted is read as Python; otherwise JSON is tried first and
//! Python only if the JSON is not well-formed. Either field set is accepted in either syntax.
//!
//! Fast path: the `asin` is extracted first (a borrowed serde struct for JSON, [`pyliteral::lookup`]
//! for Python, which stops right after the key) and lines for items the interactions never
//! mentioned are passed to [`CorpusBuilder::set_meta`] with empty meta (which counts them as
//! unused) without being parsed further, so the rest of such a line is not validated.
//!
//! Cleanup of the meta fields (all text through [`super::text::clean`]: entities decoded,
//! whitespace collapsed, empty means missing):
//! - a title is treated as missing when it is scraping junk: longer than
//!   [`MAX_TITLE_CHARS`] characters, or containing `getTime` or the word `var ` (JavaScript that
//!   some 2018 titles hold instead of a title);
//! - categories that look like HTML (`</span></span>`) are dropped, and so are immediate repeats
//!   (`Gift Cards, Gift Cards`); without any category, a `main_cat` that is not HTML is used;
//! - descriptions given as lists are joined with a space.

use super::corpus::{CorpusBuilder, ItemMeta, OnError};
use super::pyliteral;
use super::source::{LineReader, SourceError};
use super::text;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Titles longer than this (in characters, after cleanup) are treated as scraping junk.
pub const MAX_TITLE_CHARS: usize = 400;

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(rename = "reviewerID", borrow)]
    reviewer_id: Cow<'a, str>,
    #[serde(borrow)]
    asin: Cow<'a, str>,
    #[serde(rename = "unixReviewTime")]
    unix_review_time: f64,
}

#[derive(Deserialize)]
struct AsinOnly<'a> {
    #[serde(borrow)]
    asin: Cow<'a, str>,
}

/// serde_json's message with its position given as a column (the line is always 1 here).
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) if error.line() > 0 => format!("{} at column {}", &text[..at], error.column()),
        _ => text,
    }
}

/// Reads a review file into a timed builder.
pub fn read_reviews(
    reader: &mut LineReader,
    on_error: OnError,
) -> Result<CorpusBuilder, SourceError> {
    let mut builder = CorpusBuilder::new(true, on_error);
    while let Some(line) = reader.next_line()? {
        if line.trim().is_empty() {
            continue;
        }
        builder.count_interaction_line();
        let outcome = match serde_json::from_str::<Review>(line) {
            Ok(review) if review.reviewer_id.is_empty() => Err("empty `reviewerID`".to_string()),
            Ok(review) if review.asin.is_empty() => Err("empty `asin`".to_string()),
            Ok(review) if !review.unix_review_time.is_finite() => {
                Err("bad `unixReviewTime`".to_string())
            }
            Ok(review) => {
                builder.push(
                    &review.reviewer_id,
                    &review.asin,
                    Some(review.unix_review_time),
                );
                Ok(())
            }
            Err(e) => Err(format!("bad review record: {}", json_message(&e))),
        };
        if let Err(message) = outcome {
            builder.malformed(reader, message)?;
        }
    }
    Ok(builder)
}

/// What one meta line amounts to.
enum MetaLine<'a> {
    /// The item never occurs in the interactions.
    Unused(Cow<'a, str>),
    Meta(String, ItemMeta),
}

/// Reads a meta file (2014 Python literals or 2018 JSON, mixed freely) into the builder.
pub fn read_meta(reader: &mut LineReader, builder: &mut CorpusBuilder) -> Result<(), SourceError> {
    while let Some(line) = reader.next_line()? {
        if line.trim().is_empty() {
            continue;
        }
        builder.count_meta_line();
        let outcome = match meta_line(line, builder) {
            Ok(MetaLine::Unused(asin)) => {
                builder.set_meta(&asin, ItemMeta::default());
                Ok(())
            }
            Ok(MetaLine::Meta(asin, meta)) => {
                builder.set_meta(&asin, meta);
                Ok(())
            }
            Err(message) => Err(message),
        };
        if let Err(message) = outcome {
            builder.malformed(reader, message)?;
        }
    }
    Ok(())
}

fn meta_line<'a>(line: &'a str, builder: &CorpusBuilder) -> Result<MetaLine<'a>, String> {
    let body = line.trim();
    let Some(inside) = body.strip_prefix('{') else {
        return Err(
            "expected a meta record: a JSON object or a Python dict literal starting with '{'"
                .to_string(),
        );
    };
    let mut json_error = None;
    if inside.trim_start().starts_with(['"', '}']) {
        match serde_json::from_str::<AsinOnly>(body) {
            Ok(AsinOnly { asin }) => {
                if asin.is_empty() {
                    return Err("empty `asin`".to_string());
                }
                if !builder.knows_item(&asin) {
                    return Ok(MetaLine::Unused(asin));
                }
                let record: Map<String, Value> = serde_json::from_str(body)
                    .map_err(|e| format!("bad meta record: {}", json_message(&e)))?;
                return Ok(MetaLine::Meta(asin.into_owned(), meta_from_record(&record)));
            }
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(format!("bad meta record: {}", json_message(&e)));
            }
            Err(e) => json_error = Some(e),
        }
    }
    let not_python = |e: pyliteral::PyLiteralError| match &json_error {
        Some(json) => format!(
            "bad meta record: not JSON ({}) nor a Python dict literal ({e})",
            json_message(json)
        ),
        None => format!("bad meta record: not a Python dict literal: {e}"),
    };
    let asin = match pyliteral::lookup(body, "asin") {
        Ok(Some(Value::String(asin))) if asin.is_empty() => return Err("empty `asin`".to_string()),
        Ok(Some(Value::String(asin))) => asin,
        Ok(Some(other)) => return Err(format!("bad meta record: `asin` is not a string: {other}")),
        Ok(None) => return Err("bad meta record: missing field `asin`".to_string()),
        Err(e) => return Err(not_python(e)),
    };
    if !builder.knows_item(&asin) {
        return Ok(MetaLine::Unused(Cow::Owned(asin)));
    }
    match pyliteral::parse(body) {
        Ok(Value::Object(record)) => Ok(MetaLine::Meta(asin, meta_from_record(&record))),
        Ok(_) => Err("bad meta record: not a dict".to_string()),
        Err(e) => Err(not_python(e)),
    }
}

/// Builds item meta from a 2014 or 2018 record (see the module docs for the cleanup rules).
fn meta_from_record(record: &Map<String, Value>) -> ItemMeta {
    let string = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_str)
            .and_then(text::clean)
    };
    let title = string("title").filter(|t| !is_junk_title(t));
    let brand = string("brand");
    let mut categories = Vec::new();
    match record.get("categories").or_else(|| record.get("category")) {
        Some(Value::Array(entries)) => match entries.first() {
            // 2014: a list of paths; the first one.
            Some(Value::Array(first_path)) => push_categories(first_path, &mut categories),
            // 2018: one path.
            _ => push_categories(entries, &mut categories),
        },
        Some(Value::String(one)) => {
            categories.extend(text::clean(one).filter(|c| !looks_like_html(c)))
        }
        _ => {}
    }
    if categories.is_empty()
        && let Some(main) = string("main_cat")
        && !looks_like_html(&main)
    {
        categories.push(main);
    }
    let description = record.get("description").and_then(text::text_of);
    ItemMeta {
        title,
        brand,
        categories,
        description,
    }
}

fn push_categories(path: &[Value], out: &mut Vec<String>) {
    for value in path {
        let Some(category) = value.as_str().and_then(text::clean) else {
            continue;
        };
        if looks_like_html(&category) || out.last() == Some(&category) {
            continue;
        }
        out.push(category);
    }
}

fn looks_like_html(s: &str) -> bool {
    s.contains('<') && s.contains('>')
}

/// Whether a (cleaned) title is scraping junk rather than a title.
pub fn is_junk_title(title: &str) -> bool {
    if title.contains("getTime") || title.chars().nth(MAX_TITLE_CHARS).is_some() {
        return true;
    }
    // The word `var ` (JavaScript), not the end of "Bolivar ".
    title.match_indices("var ").any(|(at, _)| {
        title[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::source::test_readers::{gz_reader, reader};

    fn triple(user: &str, item: &str, time: f64) -> (String, String, Option<f64>) {
        (user.to_string(), item.to_string(), Some(time))
    }

    const REVIEWS_2018: &str = r#"{"overall": 5.0, "verified": true, "reviewTime": "06 17, 2018", "reviewerID": "A31UBHTUUIFJUT", "asin": "B004LLIKVU", "style": {"Gift Amount:": " 50"}, "reviewerName": "john stoiber", "reviewText": "Another great gift.\nWith \"quotes\" and \u00e9", "summary": "Five Stars", "unixReviewTime": 1529193600}
{"overall": 4.0, "verified": true, "reviewTime": "06 14, 2018", "reviewerID": "A2MN5JQMIY0FQ2", "asin": "B004LLIKVU", "reviewerName": "Amazon Customer", "reviewText": "Gift card for my daughter", "summary": "Ease of use", "unixReviewTime": 1528934400}

{"reviewerID": "A31UBHTUUIFJUT", "asin": "B00ABC", "unixReviewTime": 1400000000, "vote": "2", "image": ["x.jpg"]}
{"reviewerID": "A31UBHTUUIFJUT", "asin": "B00ABC", "unixReviewTime": 1400000000}
"#;

    fn review_rows() -> Vec<(String, String, Option<f64>)> {
        vec![
            triple("A31UBHTUUIFJUT", "B004LLIKVU", 1529193600.0),
            triple("A2MN5JQMIY0FQ2", "B004LLIKVU", 1528934400.0),
            triple("A31UBHTUUIFJUT", "B00ABC", 1400000000.0),
            triple("A31UBHTUUIFJUT", "B00ABC", 1400000000.0),
        ]
    }

    #[test]
    fn reads_reviews_plain_and_gzip_keeping_duplicates() {
        for mut r in [
            reader("r.json", REVIEWS_2018),
            gz_reader("r.json.gz", REVIEWS_2018),
        ] {
            let builder = read_reviews(&mut r, OnError::Fail).unwrap();
            assert!(builder.is_timed());
            let corpus = builder.finish();
            assert_eq!(corpus.triples(), review_rows());
            assert_eq!(corpus.stats.interaction_lines, 4);
            assert_eq!((corpus.users.len(), corpus.items.len()), (2, 2));
        }
    }

    #[test]
    fn review_ids_with_escapes_are_decoded() {
        let text = r#"{"reviewerID": "A\u0031", "asin": "B\/1", "unixReviewTime": 5}"#;
        let corpus = read_reviews(&mut reader("r.json", text), OnError::Fail)
            .unwrap()
            .finish();
        assert_eq!(corpus.triples(), [triple("A1", "B/1", 5.0)]);
    }

    const BAD_REVIEWS: &str = r#"{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1}
{"reviewerID": "U1", "unixReviewTime": 2}
{"reviewerID": "U1", "asin": "I3", "unixReviewTime": "3"}
{"reviewerID": "U1", "asin": "I4", "unixReviewTime": 4
{'reviewerID': 'U1', 'asin': 'I5', 'unixReviewTime': 5}
{"reviewerID": "", "asin": "I6", "unixReviewTime": 6}
{"reviewerID": "U2", "asin": "I7", "unixReviewTime": 7}
"#;

    #[test]
    fn malformed_reviews_fail_naming_file_line_and_field() {
        let err = read_reviews(&mut reader("bad.json", BAD_REVIEWS), OnError::Fail)
            .map(drop)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad.json: line 2: bad review record: missing field `asin` at column 41"
        );
    }

    #[test]
    fn malformed_reviews_are_skipped_and_counted() {
        let corpus = read_reviews(&mut gz_reader("bad.json.gz", BAD_REVIEWS), OnError::Skip)
            .unwrap()
            .finish();
        assert_eq!(
            corpus.triples(),
            [triple("U1", "I1", 1.0), triple("U2", "I7", 7.0)]
        );
        assert_eq!(corpus.stats.interaction_lines, 7);
        assert_eq!(corpus.stats.skipped_lines, 5);
        let examples = &corpus.stats.skipped_examples;
        assert!(
            examples[0].starts_with("bad.json.gz: line 2: bad review record: missing field `asin`")
        );
        assert!(
            examples[1]
                .starts_with("bad.json.gz: line 3: bad review record: invalid type: string \"3\"")
        );
        assert!(
            examples[2].starts_with("bad.json.gz: line 4: bad review record: EOF while parsing")
        );
        assert!(
            examples[3].starts_with("bad.json.gz: line 5: bad review record: key must be a string")
        );
        assert_eq!(examples[4], "bad.json.gz: line 6: empty `reviewerID`");
    }

    /// A timed builder that knows the given items.
    fn builder_with(items: &[&str]) -> CorpusBuilder {
        let mut builder = CorpusBuilder::new(true, OnError::Fail);
        for (k, item) in items.iter().enumerate() {
            builder.push("u", item, Some(k as f64));
        }
        builder
    }

    fn builder_skipping(items: &[&str]) -> CorpusBuilder {
        let mut builder = CorpusBuilder::new(true, OnError::Skip);
        for (k, item) in items.iter().enumerate() {
            builder.push("u", item, Some(k as f64));
        }
        builder
    }

    const META_2014: &str = r#"{'asin': '0000031852', 'title': "Girls' Ballet Tutu Zebra Hot Pink", 'price': 3.17, 'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', 'related': {'also_bought': ['B00JHONN1S']}, 'salesRank': {'Toys & Games': 211836}, 'categories': [['Sports & Outdoors', 'Other Sports', 'Dance'], ['Clothing, Shoes & Jewelry', 'Girls']], 'description': 'A \'tutu\'\n'}
{'asin': '0000032034', 'title': 'Adult Ballet Tutu Yellow', 'brand': 'BubuBibi', 'categories': [['Sports & Outdoors']], 'description': 'Caf\xc3\xa9 \xe2\x80\x93 tutu'}
{'asin': 'B000UNUSED', 'title': 'never parsed', 'rest': <this is not valid but is never looked at>}
{'asin': 'B00NOTITLE', 'categories': [[]], 'salesRank': {}}
"#;

    #[test]
    fn reads_2014_python_literal_meta() {
        let mut builder = builder_with(&["0000031852", "0000032034", "B00NOTITLE", "B00NOMETA"]);
        for mut r in [
            reader("meta.json", META_2014),
            gz_reader("meta.json.gz", META_2014),
        ] {
            read_meta(&mut r, &mut builder).unwrap();
        }
        let corpus = builder.finish();
        assert_eq!(
            corpus.meta_of("0000031852"),
            Some(ItemMeta {
                title: Some("Girls' Ballet Tutu Zebra Hot Pink".to_string()),
                brand: None,
                categories: vec![
                    "Sports & Outdoors".to_string(),
                    "Other Sports".to_string(),
                    "Dance".to_string()
                ],
                description: Some("A 'tutu'".to_string()),
            })
        );
        assert_eq!(
            corpus.meta_of("0000032034"),
            Some(ItemMeta {
                title: Some("Adult Ballet Tutu Yellow".to_string()),
                brand: Some("BubuBibi".to_string()),
                categories: vec!["Sports & Outdoors".to_string()],
                description: Some("Café – tutu".to_string()),
            })
        );
        assert_eq!(corpus.meta_of("B00NOTITLE"), Some(ItemMeta::default()));
        assert_eq!(corpus.meta_of("B00NOMETA"), None);
        assert_eq!(corpus.stats.meta_lines, 8);
        assert_eq!(corpus.stats.meta_unused, 2);
        assert_eq!(corpus.stats.skipped_lines, 0);
    }

    const META_2018: &str = r#"{"category": ["Gift Cards", "Gift Cards", "</span></span></span>"], "tech1": "", "description": ["Gift card for Serendipity 3.", "", "Not valid online."], "fit": "", "title": "Serendipity 3 $100.00 Gift Card", "also_buy": [], "image": [], "brand": "Serendipity 3", "details": {"ASIN: ": "B001BKEWF2"}, "main_cat": "Grocery", "price": "", "asin": "B001BKEWF2"}
{"category": [], "description": "One string &amp; more", "title": "var aPageStart = (new Date()).getTime();", "brand": "", "main_cat": "Video Games", "asin": "B00JUNK"}
{"category": [], "description": [], "title": "x", "main_cat": "<img src=\"a.png\" alt=\"AMAZON FASHION\"/>", "asin": "B00HTMLCAT"}
{"title": "unused \u00e9", "asin": "B00UNUSED2"}
"#;

    #[test]
    fn reads_2018_json_meta() {
        let mut builder = builder_with(&["B001BKEWF2", "B00JUNK", "B00HTMLCAT"]);
        read_meta(
            &mut gz_reader("meta_Gift_Cards.json.gz", META_2018),
            &mut builder,
        )
        .unwrap();
        let corpus = builder.finish();
        assert_eq!(
            corpus.meta_of("B001BKEWF2"),
            Some(ItemMeta {
                title: Some("Serendipity 3 $100.00 Gift Card".to_string()),
                brand: Some("Serendipity 3".to_string()),
                categories: vec!["Gift Cards".to_string()],
                description: Some("Gift card for Serendipity 3. Not valid online.".to_string()),
            })
        );
        assert_eq!(
            corpus.meta_of("B00JUNK"),
            Some(ItemMeta {
                title: None,
                brand: None,
                categories: vec!["Video Games".to_string()],
                description: Some("One string & more".to_string()),
            })
        );
        let html = corpus.meta_of("B00HTMLCAT").unwrap();
        assert!(html.categories.is_empty());
        assert_eq!(corpus.stats.meta_unused, 1);
        assert_eq!(corpus.stats.meta_lines, 4);
    }

    #[test]
    fn python_fallback_for_json_looking_lines_and_2014_fields_in_json() {
        // Starts like JSON but holds a Python string; JSON fails, Python reads it.
        let mixed = r#"{"asin": "B1", "title": 'It\'s mixed', "categories": [["A", "B"], ["C"]]}"#;
        // Strict JSON with the 2014 field names.
        let json2014 =
            r#"{"asin": "B2", "title": "T", "categories": [["X &amp; Y"]], "description": "D"}"#;
        // Python with u'' prefixes and a key before the asin.
        let unicode = r#"{u'title': u'Pok\xe9mon', u'asin': u'B3'}"#;
        let text = format!("{mixed}\n{json2014}\n{unicode}\n");
        let mut builder = builder_with(&["B1", "B2", "B3"]);
        read_meta(&mut reader("m.json", &text), &mut builder).unwrap();
        let corpus = builder.finish();
        let m1 = corpus.meta_of("B1").unwrap();
        assert_eq!(m1.title.as_deref(), Some("It's mixed"));
        assert_eq!(m1.categories, ["A", "B"]);
        let m2 = corpus.meta_of("B2").unwrap();
        assert_eq!(m2.categories, ["X & Y"]);
        assert_eq!(m2.description.as_deref(), Some("D"));
        assert_eq!(
            corpus.meta_of("B3").unwrap().title.as_deref(),
            Some("Pokémon")
        );
    }

    const BAD_META: &str = r#"{'asin': 'K1', 'title': 'good'}
not a record
{"title": "no asin"}
{'title': 'no asin'}
{'asin': 'K1', 'title': 'broken', }}
{"asin": "K1", "title": "broken"
{"asin": 5}
{'asin': ''}
{'asin': 'K2', 'title': 'good too'}
"#;

    #[test]
    fn malformed_meta_fails_naming_file_and_line() {
        let mut builder = builder_with(&["K1", "K2"]);
        let err = read_meta(&mut reader("meta.json", BAD_META), &mut builder).unwrap_err();
        assert_eq!(
            err.to_string(),
            "meta.json: line 2: expected a meta record: a JSON object or a Python dict literal starting with '{'"
        );
    }

    #[test]
    fn malformed_meta_is_skipped_and_counted() {
        let mut builder = builder_skipping(&["K1", "K2"]);
        read_meta(&mut reader("meta.json", BAD_META), &mut builder).unwrap();
        let corpus = builder.finish();
        assert_eq!(corpus.meta_of("K1").unwrap().title.as_deref(), Some("good"));
        assert_eq!(
            corpus.meta_of("K2").unwrap().title.as_deref(),
            Some("good too")
        );
        assert_eq!(corpus.stats.meta_lines, 9);
        assert_eq!(corpus.stats.skipped_lines, 7);
        let examples = &corpus.stats.skipped_examples;
        assert_eq!(
            examples[1],
            "meta.json: line 3: bad meta record: missing field `asin` at column 20"
        );
        assert_eq!(
            examples[2],
            "meta.json: line 4: bad meta record: missing field `asin`"
        );
        assert_eq!(
            examples[3],
            "meta.json: line 5: bad meta record: not a Python dict literal: column 36: \
             expected end of input after the value, found '}'"
        );
        assert!(
            examples[4].starts_with("meta.json: line 6: bad meta record: not JSON (EOF while parsing an object at column 32) nor a Python dict literal (column 33: expected '}' to close the bracket opened at column 1, found end of input)"),
            "{}",
            examples[4]
        );
        assert!(
            examples[5]
                .starts_with("meta.json: line 7: bad meta record: invalid type: integer `5`"),
            "{}",
            examples[5]
        );
        assert_eq!(examples[6], "meta.json: line 8: empty `asin`");
    }

    #[test]
    fn junk_titles() {
        assert!(is_junk_title("var aPageStart = (new Date()).getTime();"));
        assert!(is_junk_title("x getTime"));
        assert!(is_junk_title("Title (var x = 1)"));
        assert!(is_junk_title(&"a".repeat(401)));
        assert!(!is_junk_title(&"é".repeat(400)));
        assert!(!is_junk_title("Simon Bolivar Biography"));
        assert!(!is_junk_title("Nintendo DS var"));
        assert!(!is_junk_title("Halo 3"));
    }

    #[test]
    fn real_gift_cards_files() {
        let dir = crate::testkit::amazon_data_dir();
        let gift = dir.join("Gift_Cards");
        let mut builder = read_reviews(
            &mut LineReader::open_path(&gift.join("Gift_Cards_5.json.gz")).unwrap(),
            OnError::Fail,
        )
        .unwrap();
        read_meta(
            &mut LineReader::open_path(&gift.join("meta_Gift_Cards.json.gz")).unwrap(),
            &mut builder,
        )
        .unwrap();
        let corpus = builder.finish();
        assert_eq!(corpus.interactions(), 2_972);
        assert_eq!(corpus.users.len(), 458);
        assert_eq!(corpus.items.len(), 148);
        assert_eq!(corpus.stats.interaction_lines, 2_972);
        assert_eq!(corpus.stats.meta_lines, 1_547);
        assert_eq!(corpus.stats.skipped_lines, 0);
        assert!(
            corpus.meta.iter().all(|m| m.is_some()),
            "every five-core item has meta"
        );
        let count = |f: fn(&ItemMeta) -> bool| corpus.meta.iter().flatten().filter(&f).count();
        assert_eq!(count(|m| m.title.is_some()), 148);
        assert_eq!(count(|m| m.brand.is_some()), 119);
        assert_eq!(count(|m| m.description.is_some()), 145);
        assert_eq!(corpus.stats.meta_unused, 1_547 - 148);
        let times = corpus.time.as_ref().unwrap();
        // 2012-01-31 .. 2018-08-22.
        let (min, max) = times
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        assert_eq!((min, max), (1_327_968_000.0, 1_534_896_000.0));
    }
}
