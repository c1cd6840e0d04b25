//! Manifest validation that reports every problem at once, each with its key path.
//!
//! serde stops at the first error, so parsing runs in a loop: each error is recorded, the
//! offending key is removed (unknown keys) or replaced by the value from a known-good example
//! (missing or mistyped keys), and parsing resumes. Semantic checks (files exist, names are
//! known, numbers in range) run on the result, skipping keys already reported.

use super::env::expand_value;
use super::*;
use std::collections::BTreeSet;
use std::fmt;

/// One problem in a manifest, at a key path such as `data.reviews`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl Problems {
    pub fn single(problem: Problem) -> Self {
        Self {
            file: String::new(),
            problems: vec![problem],
        }
    }

    pub(super) fn in_file(mut self, file: &str) -> Self {
        self.file = file.to_string();
        self
    }

    /// Whether some problem is reported at exactly `path`.
    pub fn has(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path == path)
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let noun = if n == 1 { "problem" } else { "problems" };
        if self.file.is_empty() {
            writeln!(f, "{n} {noun} in the manifest:")?;
        } else {
            writeln!(f, "{}: {n} {noun}:", self.file)?;
        }
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

/// A complete, valid manifest used to patch missing or mistyped keys so parsing can go on.
fn example() -> Manifest {
    Manifest {
        job: JobSection {
            id: "example".into(),
            output: "out".into(),
            description: String::new(),
            stages: Stage::PIPELINE.to_vec(),
        },
        data: DataSection {
            format: DataFormat::Recbole,
            reviews: "reviews".into(),
            meta: None,
            on_error: OnError::Fail,
        },
        prepare: PrepareSection::default(),
        storage: S3Settings::default(),
        teacher: TeacherSection::default(),
        student: StudentSection::default(),
        encoder: EncoderSection::default(),
        train: TrainSection::default(),
        probe: ProbeSection::default(),
    }
}

/// Keys whose names say they would hold a secret.
const SECRET_KEYS: &[&str] = &[
    "api_key",
    "apikey",
    "secret",
    "secret_key",
    "access_key",
    "password",
    "token",
];

pub(super) fn parse_and_validate(text: &str, base_dir: &Path) -> Result<Manifest, Problems> {
    let mut problems = Vec::new();
    let mut table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            return Err(Problems::single(Problem::new(
                "",
                format!("{at}invalid TOML: {}", e.message()),
            )));
        }
    };

    reject_secrets(&mut table, &mut Vec::new(), &mut problems);

    let mut expansion_errors = Vec::new();
    let lookup = |name: &str| std::env::var(name).ok();
    for (key, value) in table.iter_mut() {
        expand_value(
            value,
            &mut vec![key.clone()],
            &lookup,
            &mut expansion_errors,
        );
    }
    for (path, var) in expansion_errors {
        problems.push(Problem::new(
            path,
            format!(
                "environment variable {var} is not set (write ${{{var}:-default}} for a fallback)"
            ),
        ));
    }

    let manifest = deserialize_collecting(table, &mut problems);
    if let Some(manifest) = &manifest {
        let reported: BTreeSet<String> = problems.iter().map(|p| p.path.clone()).collect();
        let mut checks = Vec::new();
        check_semantics(manifest, base_dir, &mut checks);
        problems.extend(checks.into_iter().filter(|p| !reported.contains(&p.path)));
    }

    match manifest {
        Some(manifest) if problems.is_empty() => Ok(manifest),
        _ => Err(Problems {
            file: String::new(),
            problems,
        }),
    }
}

fn reject_secrets(table: &mut toml::Table, path: &mut Vec<String>, problems: &mut Vec<Problem>) {
    let secret_keys: Vec<String> = table
        .keys()
        .filter(|k| SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    for key in secret_keys {
        table.remove(&key);
        path.push(key);
        problems.push(Problem::new(
            path.join("."),
            format!(
                "secrets are never written in a manifest: put the value in an environment variable and name it with `{}_env`",
                path.last().expect("just pushed")
            ),
        ));
        path.pop();
    }
    for (key, value) in table.iter_mut() {
        if let toml::Value::Table(inner) = value {
            path.push(key.clone());
            reject_secrets(inner, path, problems);
            path.pop();
        }
    }
}

/// Deserializes, recording and patching each error until the manifest parses. `None` when
/// patching could not converge (the problems found so far are still recorded).
fn deserialize_collecting(mut table: toml::Table, problems: &mut Vec<Problem>) -> Option<Manifest> {
    let patches = toml::Table::try_from(example()).expect("the example manifest serializes");
    let mut reported = BTreeSet::new();
    for _ in 0..200 {
        let error = match serde_path_to_error::deserialize::<_, Manifest>(toml::Value::Table(
            table.clone(),
        )) {
            Ok(manifest) => return Some(manifest),
            Err(error) => error,
        };
        let parent: Vec<String> = error
            .path()
            .iter()
            .map(|segment| segment.to_string())
            .filter(|s| s != "?")
            .collect();
        let message = error.into_inner().message().to_string();
        let (path, problem, fix) = classify(&parent, &message);
        if !reported.insert(path.join(".")) {
            break;
        }
        problems.push(Problem::new(path.join("."), problem));
        match fix {
            Fix::Remove => remove_at(&mut table, &path),
            Fix::Example => match lookup(&patches, &path) {
                Some(value) => insert_at(&mut table, &path, value.clone()),
                None => remove_at(&mut table, &path),
            },
        }
    }
    None
}

enum Fix {
    Remove,
    Example,
}

/// Turns one serde error at `parent` into (key path, message for people, how to patch).
fn classify(parent: &[String], message: &str) -> (Vec<String>, String, Fix) {
    let quoted = backticked(message);
    // serde_path_to_error's path ends at the offending key for unknown keys but at the parent
    // for missing ones: append the key only when it is not there yet.
    let join = |key: &str| {
        let mut path = parent.to_vec();
        if path.last().map(String::as_str) != Some(key) {
            path.push(key.to_string());
        }
        path
    };
    if message.starts_with("unknown field") {
        let key = quoted.first().cloned().unwrap_or_default();
        let valid: Vec<&str> = quoted.iter().skip(1).map(String::as_str).collect();
        let text = match nearest(&key, &valid) {
            Some(best) => format!("unknown key; did you mean `{best}`?"),
            None if valid.is_empty() => "unknown key".to_string(),
            None => format!("unknown key; valid keys here: {}", valid.join(", ")),
        };
        return (join(&key), text, Fix::Remove);
    }
    if message.starts_with("missing field") {
        let key = quoted.first().cloned().unwrap_or_default();
        return (join(&key), "missing (required)".to_string(), Fix::Example);
    }
    if message.starts_with("unknown variant") {
        let given = quoted.first().cloned().unwrap_or_default();
        let valid: Vec<&str> = quoted.iter().skip(1).map(String::as_str).collect();
        let hint = match nearest(&given, &valid) {
            Some(best) => format!("; did you mean `{best}`?"),
            None => String::new(),
        };
        return (
            parent.to_vec(),
            format!("`{given}` is not one of {}{hint}", valid.join(", ")),
            Fix::Example,
        );
    }
    (parent.to_vec(), message.to_string(), Fix::Example)
}

/// The `quoted` names in a serde message, in order.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The valid name closest to `given`, when it is close enough to be a likely typo.
pub(crate) fn nearest<'a>(given: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(given, v), *v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(key)?.as_table()?;
    }
    current.get(last)
}

fn remove_at(table: &mut toml::Table, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        match current.get_mut(key).and_then(toml::Value::as_table_mut) {
            Some(inner) => current = inner,
            None => return,
        }
    }
    current.remove(last);
}

fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("made a table above");
    }
    current.insert(last.clone(), value);
}

const BACKBONES: &[&str] = &["gru4rec", "sasrec", "srgnn"];
const VARIANTS: &[&str] = &[
    "id",
    "plus",
    "slim",
    "slim_minus",
    "slim_agnostic",
    "step1",
    "step2",
    "step3",
    "popularity",
];
const LORA_TARGETS: &[&str] = &["q", "k", "v", "o", "gate", "up", "down"];

fn check_semantics(m: &Manifest, base_dir: &Path, out: &mut Vec<Problem>) {
    let mut problem = |path: &str, message: String| out.push(Problem::new(path, message));

    let id = &m.job.id;
    let id_ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !id.starts_with(['-', '_']);
    if !id_ok {
        problem(
            "job.id",
            format!(
                "{id:?} is not a valid job id: use 1 to 63 lowercase letters, digits, `-` or `_`"
            ),
        );
    }
    if let Err(e) = Location::parse(&m.job.output, base_dir) {
        problem("job.output", e.to_string());
    }

    check_input(&m.data.reviews, base_dir, "data.reviews", &mut problem);
    if let Some(meta) = &m.data.meta {
        check_input(meta, base_dir, "data.meta", &mut problem);
    }

    if m.job.stages.is_empty() {
        problem(
            "job.stages",
            "names no stage; leave it out to run the whole pipeline".into(),
        );
    }

    let p = &m.prepare;
    if p.k_core == 0 {
        problem(
            "prepare.k_core",
            "must be at least 1 (1 keeps every user and item)".into(),
        );
    }
    if p.users_per_shard == 0 {
        problem("prepare.users_per_shard", "must be at least 1".into());
    }
    if p.teacher_sample == 0 {
        problem("prepare.teacher_sample", "must be at least 1".into());
    }

    let s = &m.storage;
    if let Some(endpoint) = &s.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        problem(
            "storage.endpoint",
            format!("{endpoint:?} must start with http:// or https://"),
        );
    }
    if s.part_size_mib < 5 {
        problem(
            "storage.part_size_mib",
            "S3 parts must be at least 5 MiB".into(),
        );
    }
    if s.multipart_threshold_mib < s.part_size_mib {
        problem(
            "storage.multipart_threshold_mib",
            "must be at least part_size_mib".into(),
        );
    }
    if s.max_attempts == 0 {
        problem("storage.max_attempts", "must be at least 1".into());
    }
    check_env_name(&s.access_key_env, "storage.access_key_env", &mut problem);
    check_env_name(&s.secret_key_env, "storage.secret_key_env", &mut problem);

    let t = &m.teacher;
    if t.backend == TeacherBackend::Openai && t.base_url.as_deref().unwrap_or("").is_empty() {
        problem(
            "teacher.base_url",
            "required with backend = \"openai\" (e.g. https://api.openai.com/v1)".into(),
        );
    }
    if let Some(name) = &t.api_key_env {
        check_env_name(name, "teacher.api_key_env", &mut problem);
    }
    if t.model.is_empty() {
        problem("teacher.model", "must name a model".into());
    }
    if !(t.temperature >= 0.0 && t.temperature.is_finite()) {
        problem(
            "teacher.temperature",
            "must be 0 or more (0 is greedy)".into(),
        );
    }
    if !(t.top_p > 0.0 && t.top_p <= 1.0) {
        problem("teacher.top_p", "must be in (0, 1]".into());
    }
    if t.concurrency == 0 {
        problem("teacher.concurrency", "must be at least 1".into());
    }
    if t.max_new_tokens == 0 {
        problem("teacher.max_new_tokens", "must be at least 1".into());
    }
    if let Some(Err(message)) = t
        .prompt_template
        .as_deref()
        .map(crate::prompts::check_template)
    {
        problem("teacher.prompt_template", message);
    }

    let st = &m.student;
    if let Some(Err(message)) = st
        .prompt_template
        .as_deref()
        .map(crate::prompts::check_template)
    {
        problem("student.prompt_template", message);
    }
    if st.lora_rank == 0 {
        problem("student.lora_rank", "must be at least 1".into());
    }
    if !(0.0..1.0).contains(&st.lora_dropout) {
        problem("student.lora_dropout", "must be in [0, 1)".into());
    }
    if !(0.0..1.0).contains(&st.validation_fraction) {
        problem("student.validation_fraction", "must be in [0, 1)".into());
    }
    for (key, value) in [
        ("student.batch_size", st.batch_size),
        ("student.gradient_accumulation", st.gradient_accumulation),
        ("student.epochs", st.epochs),
        ("student.max_new_tokens", st.max_new_tokens),
        ("student.generation_batch", st.generation_batch),
    ] {
        if value == 0 {
            problem(key, "must be at least 1".into());
        }
    }
    if st.max_seq_len <= st.history_token_budget {
        problem(
            "student.max_seq_len",
            format!(
                "must exceed student.history_token_budget ({}) to leave room for the rationale",
                st.history_token_budget
            ),
        );
    }
    check_names(
        &st.lora_targets,
        LORA_TARGETS,
        "student.lora_targets",
        &mut problem,
    );
    if st.lora_targets.is_empty() {
        problem(
            "student.lora_targets",
            "must name at least one projection".into(),
        );
    }

    let e = &m.encoder;
    if e.batch_size == 0 {
        problem("encoder.batch_size", "must be at least 1".into());
    }

    let tr = &m.train;
    check_names(&tr.backbones, BACKBONES, "train.backbones", &mut problem);
    check_names(&tr.variants, VARIANTS, "train.variants", &mut problem);
    if tr.seeds.is_empty() {
        problem("train.seeds", "must list at least one seed".into());
    }
    if tr.eval_negatives == 0 {
        problem(
            "train.eval_negatives",
            "must be at least 1 (the paper uses 100)".into(),
        );
    }
    if tr.embedding_dim == 0 {
        problem("train.embedding_dim", "must be at least 1".into());
    }
}

fn check_input(text: &str, base_dir: &Path, path: &str, problem: &mut impl FnMut(&str, String)) {
    match Location::parse(text, base_dir) {
        Err(e) => problem(path, e.to_string()),
        Ok(Location::Local(file)) => {
            if !file.exists() {
                problem(path, format!("file not found: {}", file.display()));
            } else if !file.is_file() {
                problem(path, format!("not a file: {}", file.display()));
            }
        }
        // Remote inputs are checked when the prepare stage opens them.
        Ok(Location::S3 { .. }) => {}
    }
}

fn check_env_name(name: &str, path: &str, problem: &mut impl FnMut(&str, String)) {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        problem(
            path,
            format!(
                "{name:?} is not an environment variable name (this key names the variable, it does not hold the secret)"
            ),
        );
    }
}

fn check_names(
    given: &[String],
    valid: &[&str],
    path: &str,
    problem: &mut impl FnMut(&str, String),
) {
    for (i, name) in given.iter().enumerate() {
        if !valid.contains(&name.as_str()) {
            let hint = match nearest(name, valid) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("valid: {}", valid.join(", ")),
            };
            problem(
                &format!("{path}.{i}"),
                format!("unknown name {name:?}; {hint}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.inter"), "user_id:token\titem_id:token\n").unwrap();
        dir
    }

    const GOOD: &str = r#"
[job]
id = "demo"
output = "out"
[data]
format = "recbole"
reviews = "x.inter"
"#;

    /// `jobs/template.toml` promises every key at its default: the parsed template equals the
    /// defaults section by section, and each key of each section appears in it (set, or
    /// commented out when it has no default).
    #[test]
    fn the_template_documents_every_key_at_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs/template.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m: Manifest = toml::from_str(&text).unwrap();
        assert_eq!(m.prepare, PrepareSection::default());
        assert_eq!(m.storage, S3Settings::default());
        assert_eq!(m.teacher, TeacherSection::default());
        assert_eq!(m.student, StudentSection::default());
        assert_eq!(m.encoder, EncoderSection::default());
        assert_eq!(m.train, TrainSection::default());
        assert_eq!(m.probe, ProbeSection::default());
        assert_eq!(m.job.stages, Stage::PIPELINE.to_vec());
        let sections = [
            ("prepare", serde_json::to_value(PrepareSection::default())),
            ("storage", serde_json::to_value(S3Settings::default())),
            ("teacher", serde_json::to_value(TeacherSection::default())),
            ("student", serde_json::to_value(StudentSection::default())),
            ("encoder", serde_json::to_value(EncoderSection::default())),
            ("train", serde_json::to_value(TrainSection::default())),
            ("probe", serde_json::to_value(ProbeSection::default())),
        ];
        for (name, value) in sections {
            let header = format!("[{name}]");
            let body = text
                .split(&header)
                .nth(1)
                .unwrap_or_else(|| panic!("no {header} in the template"));
            let body = body.split("\n[").next().unwrap();
            for key in value.unwrap().as_object().unwrap().keys() {
                let set = body.contains(&format!("\n{key} = "));
                let commented = body.contains(&format!("\n# {key} = "));
                assert!(set || commented, "jobs/template.toml: [{name}] lacks {key}");
            }
        }
    }

    #[test]
    fn a_minimal_manifest_gets_defaults() {
        let dir = data_dir();
        let m = parse_and_validate(GOOD, dir.path()).unwrap();
        assert_eq!(m.prepare.k_core, 5);
        assert_eq!(m.data.on_error, OnError::Fail);
        assert_eq!(m.teacher.backend, TeacherBackend::Local);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let dir = data_dir();
        let text = r#"
[job]
id = "Bad Id"
output = "out"
[data]
format = "recbol"
reviews = "missing.json"
on_eror = "skip"
[prepare]
k_core = "five"
users_per_shard = 0
[teacher]
backend = "openai"
api_key = "sk-123"
[train]
backbones = ["sasrec", "gru4recc"]
[extra]
x = 1
"#;
        let problems = parse_and_validate(text, dir.path()).unwrap_err();
        let text = problems.to_string();
        for (path, needle) in [
            ("job.id", "not a valid job id"),
            ("data.format", "did you mean `recbole`"),
            ("data.reviews", "file not found"),
            ("data.on_eror", "did you mean `on_error`"),
            ("prepare.k_core", "invalid type"),
            ("prepare.users_per_shard", "at least 1"),
            ("teacher.api_key", "api_key_env"),
            ("teacher.base_url", "required"),
            ("train.backbones.1", "did you mean `gru4rec`"),
            ("extra", "unknown key"),
        ] {
            let found = problems.problems.iter().find(|p| p.path == path);
            let found = found.unwrap_or_else(|| panic!("no problem at {path} in:\n{text}"));
            assert!(found.message.contains(needle), "{path}: {}", found.message);
        }
        assert!(
            !text.contains("sk-123"),
            "the secret leaked into the report"
        );
    }

    #[test]
    fn prompt_templates_must_show_the_history() {
        let dir = data_dir();
        let text = format!(
            "{GOOD}\n[teacher]\nprompt_template = \"Recommend.\"\n[student]\nprompt_template = \"{{history}}\"\n"
        );
        let problems = parse_and_validate(&text, dir.path()).unwrap_err();
        assert!(problems.has("teacher.prompt_template"), "{problems}");
        assert!(!problems.has("student.prompt_template"), "{problems}");
    }

    #[test]
    fn every_backbone_and_variant_is_accepted() {
        let dir = data_dir();
        let backbones = BACKBONES
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>();
        let variants = VARIANTS
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>();
        let text = format!(
            "{GOOD}\n[train]\nbackbones = [{}]\nvariants = [{}]\n",
            backbones.join(", "),
            variants.join(", ")
        );
        assert!(parse_and_validate(&text, dir.path()).is_ok());
    }

    #[test]
    fn missing_required_keys_are_named() {
        let dir = data_dir();
        let problems = parse_and_validate(
            "[job]\nid = \"a\"\n[data]\nformat = \"recbole\"\n",
            dir.path(),
        )
        .unwrap_err();
        assert!(problems.has("job.output"), "{problems}");
        assert!(problems.has("data.reviews"), "{problems}");
        let problems = parse_and_validate("", dir.path()).unwrap_err();
        assert!(problems.has("job"), "{problems}");
        assert!(problems.has("data"), "{problems}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let dir = data_dir();
        let problems =
            parse_and_validate("[job]\nid = \"a\"\noutput = \n", dir.path()).unwrap_err();
        assert!(problems.to_string().contains("line 3"), "{problems}");
    }

    #[test]
    fn environment_references_are_expanded() {
        let dir = data_dir();
        let text = GOOD.replace(
            "output = \"out\"",
            "output = \"${SLIM_TEST_UNSET_OUT:-fallback}\"",
        );
        let m = parse_and_validate(&text, dir.path()).unwrap();
        assert_eq!(m.job.output, "fallback");
        let text = GOOD.replace("output = \"out\"", "output = \"${SLIM_TEST_UNSET_OUT}\"");
        let problems = parse_and_validate(&text, dir.path()).unwrap_err();
        assert!(problems.has("job.output"), "{problems}");
    }

    #[test]
    fn nearest_only_suggests_close_names() {
        assert_eq!(nearest("reviwes", &["reviews", "meta"]), Some("reviews"));
        assert_eq!(nearest("zzz", &["reviews", "meta"]), None);
    }
}
