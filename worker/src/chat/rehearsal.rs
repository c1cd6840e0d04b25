//! The `rehearsal` teacher: answers without a language model, from the purchases listed in the
//! prompt, in the three-step shape SLIM asks for. Free, instant and deterministic, for
//! rehearsing a deployment or testing the pipeline end to end (as the `probe` stage rehearses
//! the runtime); its rationales say only what the history says, so they are no substitute for
//! a real teacher's.
//!
//! It reads the prompt's item lines as [`slim_shared::prompts::item_line`] writes them:
//! `- Title (brand: B; category: A > B)`.

use super::{ChatAnswer, ChatBackend, ChatRequest};
use anyhow::Result;
use async_trait::async_trait;
use std::collections::BTreeMap;

pub struct RehearsalChat;

/// One purchase as the prompt shows it.
#[derive(Debug, Default, PartialEq)]
struct Purchase {
    title: String,
    brand: Option<String>,
    category: Option<String>,
}

fn parse_line(line: &str) -> Option<Purchase> {
    let line = line.trim().strip_prefix("- ")?;
    let (title, details) = match line.rfind(" (") {
        Some(at) if line.ends_with(')') => (&line[..at], &line[at + 2..line.len() - 1]),
        _ => (line, ""),
    };
    let mut purchase = Purchase {
        title: title.trim().to_string(),
        ..Purchase::default()
    };
    for detail in details.split("; ") {
        if let Some(brand) = detail.strip_prefix("brand: ") {
            purchase.brand = Some(brand.to_string());
        } else if let Some(category) = detail.strip_prefix("category: ") {
            // The most specific level says the most.
            purchase.category = category.rsplit(" > ").next().map(str::to_string);
        }
    }
    Some(purchase)
}

/// The most frequent values, most frequent first (ties: the latest seen first).
fn most_common<'a>(values: impl Iterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (at, value) in values.enumerate() {
        let entry = counts.entry(value).or_default();
        entry.0 += 1;
        entry.1 = at;
    }
    let mut ranked: Vec<(&str, (usize, usize))> = counts.into_iter().collect();
    ranked.sort_by_key(|(_, rank)| std::cmp::Reverse(*rank));
    ranked.into_iter().take(n).map(|(v, _)| v).collect()
}

/// The rationale for a prompt's purchases.
pub fn rehearsal_answer(prompt: &str) -> String {
    let purchases: Vec<Purchase> = prompt.lines().filter_map(parse_line).collect();
    let Some(last) = purchases.last() else {
        return "Step 1: The purchase history is empty.\nStep 2: Popular categories and brands.\nStep 3: Best-selling products.".into();
    };
    let categories = most_common(purchases.iter().filter_map(|p| p.category.as_deref()), 2);
    let brands = most_common(purchases.iter().filter_map(|p| p.brand.as_deref()), 2);
    let recent: Vec<&str> = purchases
        .iter()
        .rev()
        .take(2)
        .map(|p| p.title.as_str())
        .collect();
    let or_any = |list: &[&str], any: &str| {
        if list.is_empty() {
            any.to_string()
        } else {
            list.join(" and ")
        }
    };
    format!(
        "Step 1: The customer prefers {} products; the latest purchase was {}.\n\
         Step 2: Recommend the categories {} and the brands {}.\n\
         Step 3: Recommend products similar to {}.",
        or_any(&categories, "varied"),
        last.title,
        or_any(&categories, "of the recent purchases"),
        or_any(&brands, "of the recent purchases"),
        recent.join(" and "),
    )
}

#[async_trait]
impl ChatBackend for RehearsalChat {
    fn model(&self) -> &str {
        "rehearsal"
    }

    async fn complete(&self, requests: Vec<ChatRequest>) -> Vec<Result<ChatAnswer>> {
        requests
            .iter()
            .map(|r| {
                let prompt = r.messages.last().map_or("", |m| m.content.as_str());
                let content = rehearsal_answer(prompt);
                Ok(ChatAnswer {
                    prompt_tokens: slim_shared::prompts::estimate_tokens(prompt) as u32,
                    completion_tokens: slim_shared::prompts::estimate_tokens(&content) as u32,
                    content,
                    finish_reason: "stop".into(),
                    latency_ms: 0,
                    retries: 0,
                    cached: false,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehearsal_answers_parse_into_three_steps_from_the_history() {
        let prompt = "A customer bought these products, oldest first:\n\
            - Mario Kart (brand: Nintendo; category: Video Games > Racing)\n\
            - Forza (brand: Microsoft; category: Video Games > Racing)\n\
            - Zelda (brand: Nintendo; category: Video Games > Adventure)\n\
            - item B00X\n\nThink step by step.";
        let answer = rehearsal_answer(prompt);
        let steps = slim_shared::prompts::parse_steps(&answer).expect("three steps");
        assert!(steps.step1.contains("Racing"), "{answer}");
        assert!(steps.step1.contains("item B00X"), "{answer}");
        assert!(steps.step2.contains("Nintendo and Microsoft"), "{answer}");
        assert!(steps.step3.contains("item B00X and Zelda"), "{answer}");
        assert_eq!(answer, rehearsal_answer(prompt), "deterministic");
        assert!(slim_shared::prompts::parse_steps(&rehearsal_answer("no items")).is_some());
    }
}
