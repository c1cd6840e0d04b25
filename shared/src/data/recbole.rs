//! RecBole atomic files: `.inter` interactions and `.item` item features.
//!
//! Both are tab-separated with a header row of `name:type` columns (`user_id:token`,
//! `title:token_seq`, ...). Columns are found by name, in whatever order the header gives them;
//! the `:type` part is not checked. Unknown columns are ignored.
//!
//! Interaction files come in two shapes, decided by the header:
//! - **timed**: `user_id`, `item_id` and `timestamp` (other columns such as `rating` ignored):
//!   one interaction per row, giving a timed corpus;
//! - **sequence**: `user_id` and `item_id_list` (a space-separated `token_seq`, oldest first),
//!   optionally with `item_id` (the target: the item after the list, the user's last one). The
//!   history items are pushed in order, then the target, giving an untimed corpus in which file
//!   order is time order. When both shapes' columns are present, the sequence shape wins.
//!
//! Malformed rows (wrong number of fields, an empty user or item, a bad timestamp) follow the
//! builder's error policy; blank lines are skipped without being counted.
//!
//! Item files need only `item_id`; `title`, `brand`, `categories` and `description` (or `desc`)
//! fill [`ItemMeta`], cleaned by [`super::text::clean`] (HTML entities decoded, whitespace
//! collapsed). The `categories` rule:
//! - a value that starts with `[` or a quote is read as a Python/JSON list of quoted strings
//!   (`'Video Games', 'PC'` or `["Video Games", "PC"]`; nested lists are flattened);
//! - otherwise, a value containing `,` is split on commas (`Video Games, PC, Accessories`);
//! - otherwise the whole value is one category: Amazon category names contain spaces
//!   (`Video Games`), so a space never separates categories.
//!
//! Empty entries are dropped.

use super::corpus::{CorpusBuilder, ItemMeta, OnError};
use super::pyliteral;
use super::source::{LineReader, SourceError};
use super::text;
use serde_json::Value;

/// One header column: its name and its RecBole type (empty when the header has no `:type`).
#[derive(Debug)]
struct Column {
    name: String,
    kind: String,
}

/// Reads the header row (line 1) into columns.
fn read_header(reader: &mut LineReader) -> Result<Vec<Column>, SourceError> {
    let Some(line) = reader.next_line()? else {
        return Err(SourceError::Empty {
            file: reader.name().to_string(),
        });
    };
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    Ok(line
        .split('\t')
        .map(|field| {
            let field = field.trim();
            let (name, kind) = field.split_once(':').unwrap_or((field, ""));
            Column {
                name: name.trim().to_string(),
                kind: kind.trim().to_string(),
            }
        })
        .collect())
}

fn find(columns: &[Column], name: &str) -> Option<usize> {
    columns.iter().position(|c| c.name == name)
}

fn describe(columns: &[Column]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|c| {
            if c.kind.is_empty() {
                c.name.clone()
            } else {
                format!("{}:{}", c.name, c.kind)
            }
        })
        .collect();
    if names.iter().all(|n| n.is_empty()) {
        "an empty header".to_string()
    } else {
        names.join(", ")
    }
}

/// Which interaction shape the header describes, with column indices.
enum Shape {
    Timed {
        user: usize,
        item: usize,
        time: usize,
    },
    Sequence {
        user: usize,
        list: usize,
        target: Option<usize>,
    },
}

/// Reads a RecBole `.inter` file; see the module docs for the two shapes.
pub fn read_interactions(
    reader: &mut LineReader,
    on_error: OnError,
) -> Result<CorpusBuilder, SourceError> {
    let columns = read_header(reader)?;
    let user = find(&columns, "user_id");
    let shape = match (
        user,
        find(&columns, "item_id_list"),
        find(&columns, "item_id"),
        find(&columns, "timestamp"),
    ) {
        (Some(user), Some(list), target, _) => Shape::Sequence { user, list, target },
        (Some(user), None, Some(item), Some(time)) => Shape::Timed { user, item, time },
        _ => {
            return Err(reader.error(format!(
                "not a RecBole interaction header: expected the columns user_id:token, item_id:token and \
                 timestamp:float (one interaction per row) or user_id:token and item_id_list:token_seq \
                 (one history per row); found {}",
                describe(&columns)
            )));
        }
    };
    let width = columns.len();
    let mut builder = CorpusBuilder::new(matches!(shape, Shape::Timed { .. }), on_error);
    while let Some(line) = reader.next_line()? {
        if line.trim().is_empty() {
            continue;
        }
        builder.count_interaction_line();
        let outcome = match shape {
            Shape::Timed { user, item, time } => {
                timed_row(line, width, user, item, time, &mut builder)
            }
            Shape::Sequence { user, list, target } => {
                sequence_row(line, width, user, list, target, &mut builder)
            }
        };
        if let Err(message) = outcome {
            builder.malformed(reader, message)?;
        }
    }
    Ok(builder)
}

/// Splits a row into its fields' values at the wanted column indices, checking the field count.
fn pick<const N: usize>(
    line: &str,
    width: usize,
    wanted: [Option<usize>; N],
) -> Result<[&str; N], String> {
    let mut out = [""; N];
    let mut count = 0;
    for (i, field) in line.split('\t').enumerate() {
        for (slot, want) in out.iter_mut().zip(wanted) {
            if want == Some(i) {
                *slot = field.trim();
            }
        }
        count += 1;
    }
    if count != width {
        return Err(format!(
            "expected {width} tab-separated fields (as in the header), found {count}"
        ));
    }
    Ok(out)
}

fn timed_row(
    line: &str,
    width: usize,
    user: usize,
    item: usize,
    time: usize,
    builder: &mut CorpusBuilder,
) -> Result<(), String> {
    let [user, item, time] = pick(line, width, [Some(user), Some(item), Some(time)])?;
    if user.is_empty() {
        return Err("empty user_id".to_string());
    }
    if item.is_empty() {
        return Err("empty item_id".to_string());
    }
    let time: f64 = match time.parse::<f64>() {
        Ok(t) if t.is_finite() => t,
        _ => return Err(format!("bad timestamp {time:?}: expected a number")),
    };
    builder.push(user, item, Some(time));
    Ok(())
}

fn sequence_row(
    line: &str,
    width: usize,
    user: usize,
    list: usize,
    target: Option<usize>,
    builder: &mut CorpusBuilder,
) -> Result<(), String> {
    let [user, list, target_item] = pick(line, width, [Some(user), Some(list), target])?;
    if user.is_empty() {
        return Err("empty user_id".to_string());
    }
    if target.is_some() && target_item.is_empty() {
        return Err("empty item_id (the target item)".to_string());
    }
    let mut history = list.split(' ').filter(|s| !s.is_empty()).peekable();
    if target.is_none() && history.peek().is_none() {
        return Err("empty item_id_list".to_string());
    }
    for item in history {
        builder.push(user, item, None);
    }
    if target.is_some() {
        builder.push(user, target_item, None);
    }
    Ok(())
}

/// Reads a RecBole `.item` file into the builder's item meta; see the module docs.
pub fn read_items(reader: &mut LineReader, builder: &mut CorpusBuilder) -> Result<(), SourceError> {
    let columns = read_header(reader)?;
    let Some(id) = find(&columns, "item_id") else {
        return Err(reader.error(format!(
            "not a RecBole item header: expected an item_id:token column; found {}",
            describe(&columns)
        )));
    };
    let wanted = [
        Some(id),
        find(&columns, "title"),
        find(&columns, "brand"),
        find(&columns, "categories"),
        find(&columns, "description").or_else(|| find(&columns, "desc")),
    ];
    let width = columns.len();
    while let Some(line) = reader.next_line()? {
        if line.trim().is_empty() {
            continue;
        }
        builder.count_meta_line();
        let outcome = match pick(line, width, wanted) {
            Ok(["", ..]) => Err("empty item_id".to_string()),
            Ok([item, ..]) if !builder.knows_item(item) => {
                builder.set_meta(item, ItemMeta::default());
                Ok(())
            }
            Ok([item, title, brand, categories, description]) => {
                let meta = ItemMeta {
                    title: text::clean(title),
                    brand: text::clean(brand),
                    categories: split_categories(categories),
                    description: text::clean(description),
                };
                builder.set_meta(item, meta);
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

/// A RecBole `categories` value as a list (see the module docs for the rule).
pub fn split_categories(value: &str) -> Vec<String> {
    let value = value.trim();
    if value.is_empty() {
        return Vec::new();
    }
    if value.starts_with(['[', '\'', '"']) {
        let parsed = if value.starts_with('[') {
            pyliteral::parse(value)
        } else {
            pyliteral::parse(&format!("[{value}]"))
        };
        if let Ok(parsed) = parsed {
            let mut out = Vec::new();
            collect_strings(&parsed, &mut out);
            return out;
        }
    }
    if value.contains(',') {
        value.split(',').filter_map(text::clean).collect()
    } else {
        text::clean(value).into_iter().collect()
    }
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.extend(text::clean(s)),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::source::test_readers::{gz_reader, reader};

    fn triple(user: &str, item: &str, time: Option<f64>) -> (String, String, Option<f64>) {
        (user.to_string(), item.to_string(), time)
    }

    #[test]
    fn timed_interactions_with_reordered_columns() {
        let text = "rating:float\ttimestamp:float\titem_id:token\tuser_id:token\n\
                    5.0\t100\ti1\tu1\n\
                    \n\
                    4.0\t99.5\ti2\tu2\n\
                    3.0\t101\ti1\tu1\n";
        for mut r in [reader("a.inter", text), gz_reader("a.inter.gz", text)] {
            let builder = read_interactions(&mut r, OnError::Fail).unwrap();
            assert!(builder.is_timed());
            let corpus = builder.finish();
            assert_eq!(
                corpus.triples(),
                [
                    triple("u1", "i1", Some(100.0)),
                    triple("u2", "i2", Some(99.5)),
                    triple("u1", "i1", Some(101.0)),
                ]
            );
            assert_eq!(corpus.stats.interaction_lines, 3);
            assert_eq!(corpus.stats.skipped_lines, 0);
        }
    }

    #[test]
    fn sequence_interactions_with_and_without_target() {
        let text = "item_id:token\tuser_id:token\titem_id_list:token_seq\n\
                    c\tu1\ta b\n\
                    z\tu2\t\n\
                    q\tu3\tx  y \n";
        let corpus = read_interactions(&mut reader("s.inter", text), OnError::Fail).unwrap();
        assert!(!corpus.is_timed());
        let corpus = corpus.finish();
        assert_eq!(
            corpus.triples(),
            [
                triple("u1", "a", None),
                triple("u1", "b", None),
                triple("u1", "c", None),
                triple("u2", "z", None),
                triple("u3", "x", None),
                triple("u3", "y", None),
                triple("u3", "q", None),
            ]
        );

        let text = "user_id:token\titem_id_list:token_seq\ttimestamp_list:float_seq\n\
                    u1\ta b c\t1 2 3\n";
        let corpus = read_interactions(&mut reader("s2.inter", text), OnError::Fail)
            .unwrap()
            .finish();
        assert_eq!(corpus.interactions(), 3);
        assert!(corpus.time.is_none());
    }

    #[test]
    fn duplicates_are_kept() {
        let text = "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\t1\n";
        let corpus = read_interactions(&mut reader("d.inter", text), OnError::Fail)
            .unwrap()
            .finish();
        assert_eq!(corpus.interactions(), 2);
        assert_eq!(corpus.items.len(), 1);
    }

    #[test]
    fn missing_columns_name_file_line_and_columns() {
        let text = "user_id:token\titem_id:token\trating:float\nu\ti\t5\n";
        let err = read_interactions(&mut reader("x.inter", text), OnError::Skip)
            .map(drop)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("x.inter: line 1: not a RecBole interaction header"),
            "{msg}"
        );
        assert!(msg.contains("timestamp:float"), "{msg}");
        assert!(msg.contains("item_id_list:token_seq"), "{msg}");
        assert!(
            msg.ends_with("found user_id:token, item_id:token, rating:float"),
            "{msg}"
        );

        let err = read_items(
            &mut reader("x.item", "title:token_seq\n"),
            &mut CorpusBuilder::new(false, OnError::Fail),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.item: line 1: not a RecBole item header: expected an item_id:token column; found title:token_seq"
        );
    }

    const BAD_TIMED: &str = "user_id:token\titem_id:token\ttimestamp:float\n\
                             u1\ti1\t1\n\
                             u1\ti2\n\
                             \ti3\t3\n\
                             u1\t\t4\n\
                             u1\ti5\tnoon\n\
                             u1\ti6\tinf\n\
                             u2\ti7\t7\n";

    #[test]
    fn malformed_rows_fail_with_file_and_line() {
        let err = read_interactions(&mut reader("bad.inter", BAD_TIMED), OnError::Fail)
            .map(drop)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad.inter: line 3: expected 3 tab-separated fields (as in the header), found 2"
        );
    }

    #[test]
    fn malformed_rows_are_skipped_and_counted() {
        let corpus = read_interactions(&mut reader("bad.inter", BAD_TIMED), OnError::Skip)
            .unwrap()
            .finish();
        assert_eq!(
            corpus.triples(),
            [triple("u1", "i1", Some(1.0)), triple("u2", "i7", Some(7.0))]
        );
        assert_eq!(corpus.stats.interaction_lines, 7);
        assert_eq!(corpus.stats.skipped_lines, 5);
        assert_eq!(
            corpus.stats.skipped_examples,
            [
                "bad.inter: line 3: expected 3 tab-separated fields (as in the header), found 2",
                "bad.inter: line 4: empty user_id",
                "bad.inter: line 5: empty item_id",
                "bad.inter: line 6: bad timestamp \"noon\": expected a number",
                "bad.inter: line 7: bad timestamp \"inf\": expected a number",
            ]
        );
    }

    #[test]
    fn malformed_sequence_rows() {
        let text = "user_id:token\titem_id_list:token_seq\titem_id:token\n\
                    u1\ta b\t\n\
                    \ta\tb\n\
                    u2\ta b\tc\td\n\
                    u3\ta\tb\n";
        let corpus = read_interactions(&mut reader("s.inter", text), OnError::Skip)
            .unwrap()
            .finish();
        assert_eq!(
            corpus.triples(),
            [triple("u3", "a", None), triple("u3", "b", None)]
        );
        assert_eq!(corpus.stats.skipped_lines, 3);
        assert_eq!(
            corpus.stats.skipped_examples[0],
            "s.inter: line 2: empty item_id (the target item)"
        );

        let text = "user_id:token\titem_id_list:token_seq\nu1\t \n";
        let err = read_interactions(&mut reader("s.inter", text), OnError::Fail)
            .map(drop)
            .unwrap_err();
        assert_eq!(err.to_string(), "s.inter: line 2: empty item_id_list");
    }

    #[test]
    fn items_fill_meta_and_count_unknown() {
        let inter = "user_id:token\titem_id_list:token_seq\titem_id:token\nu1\t1 2\t3\n";
        let mut builder = read_interactions(&mut reader("i.inter", inter), OnError::Fail).unwrap();
        let items = "categories:token_seq\tbrand:token\ttitle:token_seq\titem_id:token\tdesc:token_seq\n\
                     Video Games, PC\tEA &amp; Co\tTom Clancy&#39;s  Splinter&nbsp;Cell\t1\tA  stealth game.\n\
                     'Video Games', 'Mac'\t\tOnly title\t2\t\n\
                     \n\
                     Toys\tX\tUnknown\t99\tD\n";
        read_items(&mut gz_reader("i.item", items), &mut builder).unwrap();
        let corpus = builder.finish();
        assert_eq!(
            corpus.meta_of("1"),
            Some(ItemMeta {
                title: Some("Tom Clancy's Splinter Cell".to_string()),
                brand: Some("EA & Co".to_string()),
                categories: vec!["Video Games".to_string(), "PC".to_string()],
                description: Some("A stealth game.".to_string()),
            })
        );
        assert_eq!(
            corpus.meta_of("2"),
            Some(ItemMeta {
                title: Some("Only title".to_string()),
                brand: None,
                categories: vec!["Video Games".to_string(), "Mac".to_string()],
                description: None,
            })
        );
        // Item 3 has no row: it stays without meta.
        assert_eq!(corpus.meta_of("3"), None);
        assert_eq!(corpus.stats.meta_lines, 3);
        assert_eq!(corpus.stats.meta_unused, 1);
    }

    #[test]
    fn items_with_only_an_id_column_and_malformed_rows() {
        let inter = "user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\t2\n";
        let mut builder = read_interactions(&mut reader("i.inter", inter), OnError::Skip).unwrap();
        read_items(
            &mut reader(
                "i.item",
                "item_id:token\tdescription:token_seq\na\tx\tEXTRA\nb\tDesc\n",
            ),
            &mut builder,
        )
        .unwrap();
        let corpus = builder.finish();
        assert_eq!(corpus.meta_of("a"), None);
        assert_eq!(
            corpus.meta_of("b").unwrap().description.as_deref(),
            Some("Desc")
        );
        assert_eq!(corpus.stats.skipped_lines, 1);

        let mut builder = read_interactions(&mut reader("i.inter", inter), OnError::Fail).unwrap();
        let err = read_items(
            &mut reader("i.item", "item_id:token\ttitle:token_seq\n\n\tT\n"),
            &mut builder,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "i.item: line 3: empty item_id");
    }

    #[test]
    fn category_rule() {
        assert_eq!(split_categories("Video Games"), ["Video Games"]);
        assert_eq!(
            split_categories("Video Games,PC , Accessories,"),
            ["Video Games", "PC", "Accessories"]
        );
        assert_eq!(
            split_categories("'Video Games', 'PC, Mac'"),
            ["Video Games", "PC, Mac"]
        );
        assert_eq!(split_categories("[\"A & B\", [\"C\"]]"), ["A & B", "C"]);
        assert_eq!(split_categories("Toys &amp; Games"), ["Toys & Games"]);
        assert_eq!(split_categories("  "), Vec::<String>::new());
        // An unparsable quoted value falls back to the comma rule.
        assert_eq!(split_categories("'A, B"), ["'A", "B"]);
    }

    #[test]
    fn real_games_files() {
        let dir = crate::testkit::amazon_data_dir();
        let games = dir.join("Video_Games");
        let mut r = LineReader::open_path(&games.join("Games-6k.test.inter")).unwrap();
        let mut builder = read_interactions(&mut r, OnError::Fail).unwrap();
        read_items(
            &mut LineReader::open_path(&games.join("Games.item")).unwrap(),
            &mut builder,
        )
        .unwrap();
        let corpus = builder.finish();
        assert_eq!(corpus.users.len(), 50_546);
        // 389,718 history items + 50,546 targets.
        assert_eq!(corpus.interactions(), 440_264);
        assert_eq!(corpus.items.len(), 16_859);
        assert!(corpus.time.is_none());
        assert_eq!(corpus.stats.interaction_lines, 50_546);
        assert_eq!(corpus.stats.meta_lines, 16_859);
        assert_eq!(corpus.stats.meta_unused, 0);
        assert_eq!(corpus.stats.skipped_lines, 0);
        let titled = corpus
            .meta
            .iter()
            .flatten()
            .filter(|m| m.title.is_some())
            .count();
        assert_eq!(titled, 16_859);
        // The first user's history: "0 1 ... 13" then target 14, in file order.
        let first: Vec<&str> = (0..15).map(|k| corpus.items.get(corpus.item[k])).collect();
        assert_eq!(first, (0..15).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(
            corpus.meta_of("0").unwrap().title.as_deref(),
            Some("Fire Emblem: The Sacred Stones")
        );
        // Entities are decoded.
        assert!(
            !corpus
                .meta
                .iter()
                .flatten()
                .any(|m| m.title.as_deref().unwrap().contains("&amp;"))
        );
    }
}
