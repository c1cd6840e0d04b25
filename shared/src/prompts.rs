//! The prompts of SLIM's two language models and the parser of their answers.
//!
//! - The teacher gets the three-step chain-of-thought prompt (preferences, then categories and
//!   brands, then concrete items) over a user's training history; the student gets the shorter
//!   prompt it is distilled on. Both are templates with placeholders, overridable in the
//!   manifest (`teacher.prompt_template`, `student.prompt_template`).
//! - [`parse_steps`] splits an answer into step 1, 2 and 3, tolerating what real models write:
//!   markdown, `Step 1:`, `**Step 1**`, `1.`, topic headers, or three bare paragraphs.
//!
//! Pure text: no model and no I/O. Token budgets are counted with a function the caller passes,
//! so the budget is exact for whichever tokenizer the caller has (or an estimate when it has
//! none, see [`estimate_tokens`]).
//!
//! Leakage: a prompt is built only from the items the caller passes, and callers pass the
//! user's training history (`users.parquet` `history`), never `valid_item` or `test_item`.

use crate::schema::ItemRow;

/// The placeholder replaced by the user's history, one `- item` line per item, oldest first.
pub const HISTORY: &str = "{history}";
/// The placeholder replaced by the number of items shown.
pub const COUNT: &str = "{count}";

/// The teacher's default prompt: SLIM's three reasoning steps, with the answer's shape spelled
/// out so the steps can be parsed. The steps are described in prose rather than listed as
/// `Step N:` lines, which small models tend to echo back instead of answering.
pub const TEACHER_TEMPLATE: &str = "\
A customer bought these products, oldest first:
{history}

Think step by step about what to recommend to this customer next. First infer the customer's \
preferences from these purchases, then recommend categories and brands that fit those \
preferences, then recommend concrete products that match those categories and brands. Write the \
three parts as \"Step 1: ...\", \"Step 2: ...\" and \"Step 3: ...\".";

/// The student's default prompt: the same task without the spelled-out reasoning, so the
/// student learns the reasoning from the teacher's answers (SLIM's simplified prompt p'_u).
pub const STUDENT_TEMPLATE: &str = "\
A customer bought these products, oldest first:
{history}

Reason step by step: the customer's preferences, then fitting categories and brands, then \
products to recommend.";

/// Which model a prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Teacher,
    Student,
}

impl PromptKind {
    pub fn default_template(self) -> &'static str {
        match self {
            Self::Teacher => TEACHER_TEMPLATE,
            Self::Student => STUDENT_TEMPLATE,
        }
    }

    /// The manifest's override, else the default.
    pub fn template(self, manifest_override: Option<&str>) -> &str {
        manifest_override.unwrap_or(self.default_template())
    }
}

/// Checks a template override: it must show the history somewhere.
pub fn check_template(template: &str) -> Result<(), String> {
    if template.contains(HISTORY) {
        Ok(())
    } else {
        Err(format!(
            "must contain {HISTORY} (where the user's purchases go); placeholders: {HISTORY}, {COUNT}"
        ))
    }
}

/// A rough token count for text when no tokenizer is at hand (a remote teacher): about four
/// characters per token for English, rounded up. Budgets built on it are approximate.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// One item as the prompt shows it: `Title (brand: B; category: A > B)`. Items without a
/// title show their id, so every purchase stays visible.
pub fn item_line(item: &ItemRow) -> String {
    let mut line = match &item.title {
        Some(title) if !title.trim().is_empty() => title.trim().to_string(),
        _ => format!("item {}", item.item_id),
    };
    let mut details = Vec::new();
    if let Some(brand) = item
        .brand
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        details.push(format!("brand: {brand}"));
    }
    if !item.categories.is_empty() {
        details.push(format!("category: {}", item.categories.join(" > ")));
    }
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join("; ")));
    }
    line
}

/// A prompt and what went into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPrompt {
    pub text: String,
    /// Items shown.
    pub items: usize,
    /// Oldest items left out to stay within the budget.
    pub dropped: usize,
    /// Tokens of the history part, as counted by the caller's function.
    pub history_tokens: usize,
}

/// Builds a prompt from `template` and a user's training history (`items`, oldest first).
/// The history is cut oldest-first to `budget` tokens (0 = no limit), but the most recent item
/// is always kept: a prompt with no history would ask about nothing.
pub fn build_prompt(
    template: &str,
    items: &[&ItemRow],
    budget: usize,
    count_tokens: impl Fn(&str) -> usize,
) -> BuiltPrompt {
    let lines: Vec<String> = items
        .iter()
        .map(|i| format!("- {}", item_line(i)))
        .collect();
    let mut kept = 0;
    let mut tokens = 0;
    // Newest first: the recent purchases say most about the next one.
    for line in lines.iter().rev() {
        let cost = count_tokens(line) + 1; // + the newline
        if kept > 0 && budget > 0 && tokens + cost > budget {
            break;
        }
        tokens += cost;
        kept += 1;
    }
    let history = lines[lines.len() - kept..].join("\n");
    let text = template
        .replace(COUNT, &kept.to_string())
        .replace(HISTORY, &history);
    BuiltPrompt {
        text,
        items: kept,
        dropped: lines.len() - kept,
        history_tokens: tokens,
    }
}

/// An answer split into SLIM's three steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps {
    /// The user's preferences.
    pub step1: String,
    /// Recommended categories and brands.
    pub step2: String,
    /// Recommended items.
    pub step3: String,
}

/// How strongly a line announces a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderKind {
    /// `Step 2:`, `**Step 2**`, `### Step 2 -`.
    Keyword,
    /// `2.`, `2)`, `**2.**`: weaker, because step 3's item lists are numbered too.
    Numbered,
    /// `Preferences:`, `Categories and brands:`, `Recommended products:`.
    Topic,
}

/// Splits an answer into three steps, or `None` when it cannot be done (a step missing or
/// empty). Tried in order: `Step N` headers, `N.` numbering, topic headers, three paragraphs.
/// Text before the first header (a preamble) is left out; a header's own line counts as the
/// start of its step.
pub fn parse_steps(answer: &str) -> Option<Steps> {
    let lines: Vec<&str> = answer.lines().collect();
    let headers: Vec<Option<(u8, HeaderKind, &str)>> = lines.iter().map(|l| header(l)).collect();
    let kinds: [&[HeaderKind]; 3] = [
        &[HeaderKind::Keyword],
        &[HeaderKind::Keyword, HeaderKind::Numbered],
        &[HeaderKind::Topic],
    ];
    for accepted in kinds {
        if let Some(steps) = split_at_headers(&lines, &headers, accepted) {
            return Some(steps);
        }
    }
    let paragraphs: Vec<String> = answer
        .split("\n\n")
        .map(clean_step)
        .filter(|p| !p.is_empty())
        .collect();
    if let [a, b, c] = paragraphs.as_slice() {
        return Some(Steps {
            step1: a.clone(),
            step2: b.clone(),
            step3: c.clone(),
        });
    }
    None
}

/// Steps 1, 2, 3 at the first headers of the `accepted` kinds that come in that order.
fn split_at_headers(
    lines: &[&str],
    headers: &[Option<(u8, HeaderKind, &str)>],
    accepted: &[HeaderKind],
) -> Option<Steps> {
    let mut starts = Vec::with_capacity(3);
    let mut from = 0;
    for step in 1..=3u8 {
        let at = (from..lines.len()).find(
            |&i| matches!(headers[i], Some((n, kind, _)) if n == step && accepted.contains(&kind)),
        )?;
        starts.push(at);
        from = at + 1;
    }
    let text = |k: usize| {
        let start = starts[k];
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let first = headers[start].map_or("", |(_, _, rest)| rest);
        let body = std::iter::once(first)
            .chain(lines[start + 1..end].iter().copied())
            .collect::<Vec<_>>()
            .join("\n");
        clean_step(&body)
    };
    let steps = Steps {
        step1: text(0),
        step2: text(1),
        step3: text(2),
    };
    (!steps.step1.is_empty() && !steps.step2.is_empty() && !steps.step3.is_empty()).then_some(steps)
}

/// Markdown decoration around headers and numbers.
const DECORATION: &[char] = &['#', '*', '_', '>', '-', '•', '`', ' ', '\t'];
/// What separates a header from its text.
const SEPARATORS: &[char] = &[':', '.', ')', '-', '–', '—', '*', '_', ' ', '\t'];

/// Whether `line` starts a step, and which; the text after the header is returned with it.
fn header(line: &str) -> Option<(u8, HeaderKind, &str)> {
    let t = line.trim_start_matches(DECORATION);
    let lower = t.to_ascii_lowercase();
    if let Some(after) = lower.strip_prefix("step") {
        let digits = after.trim_start();
        let n = digits.chars().next()?.to_digit(10)?;
        let consumed = t.len() - digits.len() + 1;
        let next = t[consumed..].chars().next();
        if (1..=3).contains(&n) && !next.is_some_and(|c| c.is_ascii_digit()) {
            return Some((n as u8, HeaderKind::Keyword, header_rest(&t[consumed..])));
        }
        return None;
    }
    let mut chars = t.chars();
    if let (Some(d), Some(sep)) = (chars.next(), chars.next())
        && let Some(n) = d.to_digit(10)
        && (1..=3).contains(&n)
        && matches!(sep, '.' | ')' | ':')
    {
        return Some((n as u8, HeaderKind::Numbered, header_rest(&t[2..])));
    }
    // Topic headers: a short line ending in ':' (markdown aside) that names a step's subject.
    let bare = lower.trim_end_matches(DECORATION);
    if bare.ends_with(':') && bare.len() <= 60 {
        let rest = "";
        if bare.contains("preference") || bare.contains("interest") {
            return Some((1, HeaderKind::Topic, rest));
        }
        if bare.contains("categor") || bare.contains("brand") {
            return Some((2, HeaderKind::Topic, rest));
        }
        if bare.contains("recommend") || bare.contains("product") || bare.contains("item") {
            return Some((3, HeaderKind::Topic, rest));
        }
    }
    None
}

/// The text after a header's number, without separators and closing emphasis.
fn header_rest(rest: &str) -> &str {
    rest.trim_start_matches(SEPARATORS)
        .trim_end()
        .trim_end_matches(['*', '_'])
}

/// A step's text without surrounding whitespace and stray emphasis markers.
fn clean_step(text: &str) -> String {
    text.trim()
        .trim_start_matches(['*', '_'])
        .trim_end_matches(['*', '_'])
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: u32, title: Option<&str>, brand: Option<&str>, categories: &[&str]) -> ItemRow {
        ItemRow {
            item_index: index,
            item_id: format!("B{index:04}"),
            title: title.map(String::from),
            brand: brand.map(String::from),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            description: None,
            has_meta: true,
            text: String::new(),
            train_count: 1,
        }
    }

    #[test]
    fn teacher_prompt_renders_the_history_in_time_order() {
        let a = item(
            0,
            Some("Zelda"),
            Some("Nintendo"),
            &["Video Games", "Switch"],
        );
        let b = item(1, None, None, &[]);
        let c = item(2, Some("Halo"), None, &["Video Games"]);
        let p = build_prompt(TEACHER_TEMPLATE, &[&a, &b, &c], 0, estimate_tokens);
        assert_eq!((p.items, p.dropped), (3, 0));
        let zelda = p
            .text
            .find("- Zelda (brand: Nintendo; category: Video Games > Switch)")
            .unwrap();
        let b0001 = p.text.find("- item B0001\n").unwrap();
        let halo = p.text.find("- Halo (category: Video Games)").unwrap();
        assert!(zelda < b0001 && b0001 < halo, "{}", p.text);
        assert!(p.text.contains("Step 3:") && !p.text.contains(HISTORY));
    }

    #[test]
    fn history_is_cut_oldest_first_to_the_budget_keeping_the_newest() {
        let items: Vec<ItemRow> = (0..10)
            .map(|i| item(i, Some(&format!("Game {i}")), None, &[]))
            .collect();
        let refs: Vec<&ItemRow> = items.iter().collect();
        // One token per word: each line "- Game N" costs 3 + 1.
        let words = |s: &str| s.split_whitespace().count();
        let p = build_prompt("{history}", &refs, 12, words);
        assert_eq!((p.items, p.dropped, p.history_tokens), (3, 7, 12));
        assert_eq!(p.text, "- Game 7\n- Game 8\n- Game 9");
        // A budget smaller than one item still shows the newest.
        let p = build_prompt("{history}", &refs, 1, words);
        assert_eq!(p.text, "- Game 9");
    }

    #[test]
    fn template_overrides_fill_both_placeholders_and_must_show_the_history() {
        let a = item(0, Some("Zelda"), None, &[]);
        let p = build_prompt("{count} items:\n{history}\nWhy?", &[&a], 0, estimate_tokens);
        assert_eq!(p.text, "1 items:\n- Zelda\nWhy?");
        assert!(
            check_template("no placeholder")
                .unwrap_err()
                .contains("{history}")
        );
        assert!(check_template("x {history}").is_ok());
        assert_eq!(PromptKind::Student.template(None), STUDENT_TEMPLATE);
        assert_eq!(PromptKind::Teacher.template(Some("{history}")), "{history}");
    }

    fn steps(a: &str, b: &str, c: &str) -> Option<Steps> {
        Some(Steps {
            step1: a.into(),
            step2: b.into(),
            step3: c.into(),
        })
    }

    #[test]
    fn parses_plain_step_headers_and_drops_a_preamble() {
        let answer = "Sure! Here is my reasoning.\n\nStep 1: Likes RPGs.\nStep 2: Nintendo, RPG.\n\nStep 3: Xenoblade.";
        assert_eq!(
            parse_steps(answer),
            steps("Likes RPGs.", "Nintendo, RPG.", "Xenoblade.")
        );
    }

    #[test]
    fn parses_markdown_headers_with_text_on_the_next_lines() {
        let answer = "### **Step 1: Preferences**\nThe user likes racing.\n\n**Step 2** - Categories\nRacing games by EA.\n\n## Step 3.\n1. Need for Speed\n2. Burnout";
        assert_eq!(
            parse_steps(answer),
            steps(
                "Preferences\nThe user likes racing.",
                "Categories\nRacing games by EA.",
                "1. Need for Speed\n2. Burnout"
            )
        );
    }

    #[test]
    fn parses_numbered_steps_whose_last_step_is_a_numbered_list() {
        let answer = "1. The user likes shooters.\n2) Shooters from Bungie.\n3. Items:\n1. Halo 3\n2. Destiny";
        assert_eq!(
            parse_steps(answer),
            steps(
                "The user likes shooters.",
                "Shooters from Bungie.",
                "Items:\n1. Halo 3\n2. Destiny"
            )
        );
    }

    #[test]
    fn step_keywords_win_over_numbered_lists_inside_steps() {
        let answer = "Step 1:\n1. likes puzzles\n2. likes co-op\nStep 2:\n3. Puzzle games\nStep 3:\nPortal 2";
        assert_eq!(
            parse_steps(answer),
            steps(
                "1. likes puzzles\n2. likes co-op",
                "3. Puzzle games",
                "Portal 2"
            )
        );
    }

    #[test]
    fn parses_topic_headers_and_bare_paragraphs() {
        let answer = "**Preferences:**\nStrategy games.\n\n**Categories and brands:**\nPC strategy, Firaxis.\n\n**Recommended products:**\nCivilization VI";
        assert_eq!(
            parse_steps(answer),
            steps(
                "Strategy games.",
                "PC strategy, Firaxis.",
                "Civilization VI"
            )
        );
        let answer = "They like sports games.\n\nSports titles by EA.\n\nFIFA 19 and Madden 19.";
        assert_eq!(
            parse_steps(answer),
            steps(
                "They like sports games.",
                "Sports titles by EA.",
                "FIFA 19 and Madden 19."
            )
        );
    }

    #[test]
    fn unparseable_answers_are_none() {
        assert_eq!(parse_steps(""), None);
        assert_eq!(parse_steps("I cannot help with that."), None);
        // Step 3 missing, or steps out of order, or an empty step.
        assert_eq!(parse_steps("Step 1: a\nStep 2: b"), None);
        assert_eq!(
            parse_steps("Step 2: b\nStep 1: a\nStep 3: c\nfoo\nbar"),
            None
        );
        assert_eq!(parse_steps("Step 1: a\nStep 2:\nStep 3: c"), None);
        // "Step 10" is not step 1.
        assert_eq!(parse_steps("Step 10: a\nStep 2: b\nStep 3: c"), None);
    }
}
