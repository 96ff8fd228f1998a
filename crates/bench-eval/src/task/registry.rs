//! Task names: lm-eval's `--include_path DIR` index and the resolution of `--tasks` names into
//! tasks and groups, as lm-evaluation-harness 0.4.13 does (`lm_eval/tasks/_index.py`,
//! `_factory.py`):
//!
//! * every `*.yaml` under each include path (recursively, in path order, `__pycache__` and
//!   `.ipynb_checkpoints` left out) is read with its `include`s; a YAML with `group:` and a
//!   `task:` list is a group, one with a `task:` name is a task, and each of its `tag:` names
//!   (and an old-style `group:` name on a task) selects it. Within one include path the first
//!   file of a name wins; a later include path overrides an earlier one. Files that are not
//!   task YAMLs (no `task`, unreadable) are skipped, as lm-eval skips them; an unknown name's
//!   error says how many were;
//! * a group's members are task, group or tag names, or inline mappings: `{task: NAME, ...}`
//!   overrides keys of a known task (an unknown NAME is an inline task called `GROUP::NAME`),
//!   `{group: NAME, task: [...]}` is a nested group. A group YAML's keys other than `group`,
//!   `group_alias`, `task`, `aggregate_metric_list` and `metadata` override every member
//!   task's (lm-eval's group-level `num_fewshot: 5`, say);
//! * a tag runs its tasks in name order, with no aggregate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config::{TaskConfig, merge_include, read_merged};
use super::group::{GroupSpec, Member, parse_aggregate};
use crate::{EvalError, Result};

/// Keys of a group YAML that describe the group; its other keys override the member tasks'.
const GROUP_FIELDS: &[&str] = &[
    "group",
    "group_alias",
    "task",
    "aggregate_metric_list",
    "metadata",
];

/// Folders lm-eval's index leaves out.
const IGNORED_DIRS: &[&str] = &["__pycache__", ".ipynb_checkpoints"];

/// Bounds on the walk (a link loop or a huge tree is an error, not a hang).
const MAX_DEPTH: usize = 32;
const MAX_YAML_FILES: usize = 100_000;

/// Bound on group nesting (a group listing itself is an error, not a loop).
const MAX_GROUP_DEPTH: usize = 16;

#[derive(Debug, Clone)]
enum Entry {
    Task(PathBuf),
    Group(PathBuf, Map<String, Value>),
    Tag(BTreeSet<String>),
}

/// The names under the include paths.
#[derive(Debug, Clone, Default)]
pub struct TaskIndex {
    entries: BTreeMap<String, Entry>,
    /// What was searched (for errors).
    roots: Vec<PathBuf>,
    /// YAML files that are not tasks or groups (and why), as lm-eval skips them.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Tasks and groups to run: tasks once each, in first-named order; groups parents first.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub tasks: Vec<TaskConfig>,
    pub groups: Vec<GroupSpec>,
    /// Groups whose members are being resolved (a group reached again is a cycle).
    building: BTreeSet<String>,
}

impl Selection {
    /// The leaf tasks of `group`, nested groups flattened, in member order.
    pub fn leaves(&self, group: &GroupSpec) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_leaves(group, &mut out, 0);
        out
    }

    fn collect_leaves(&self, group: &GroupSpec, out: &mut Vec<String>, depth: usize) {
        if depth > MAX_GROUP_DEPTH {
            return;
        }
        for m in &group.members {
            match m {
                Member::Task(t) => out.push(t.clone()),
                Member::Group(g) => {
                    if let Some(inner) = self.groups.iter().find(|x| &x.name == g) {
                        self.collect_leaves(inner, out, depth + 1);
                    }
                }
            }
        }
    }

    fn add_task(&mut self, config: TaskConfig) {
        if !self.tasks.iter().any(|t| t.task == config.task) {
            self.tasks.push(config);
        }
    }
}

fn task_error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn yaml_files(root: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| EvalError::Io {
        path: root.to_path_buf(),
        source,
    };
    if depth > MAX_DEPTH {
        return Err(task_error(
            root,
            "--include-path",
            format!("folders nested more than {MAX_DEPTH} deep"),
        ));
    }
    let mut entries = std::fs::read_dir(root)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // `symlink_metadata`: a linked folder is not followed (no loops).
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        if meta.is_dir() {
            if !IGNORED_DIRS.contains(&name) {
                yaml_files(&path, depth + 1, out)?;
            }
        } else if name.ends_with(".yaml") {
            if out.len() >= MAX_YAML_FILES {
                return Err(task_error(
                    root,
                    "--include-path",
                    format!("more than {MAX_YAML_FILES} YAML files"),
                ));
            }
            out.push(path);
        }
    }
    Ok(())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

impl TaskIndex {
    /// Index every `*.yaml` under `roots`.
    ///
    /// # Errors
    /// An include path that is not a readable folder, or a tree past the walk's bounds.
    pub fn build(roots: &[PathBuf]) -> Result<Self> {
        let mut index = Self {
            roots: roots.to_vec(),
            ..Self::default()
        };
        for root in roots {
            if !root.is_dir() {
                return Err(task_error(root, "--include-path", "is not a folder"));
            }
            let mut files = Vec::new();
            yaml_files(root, 0, &mut files)?;
            let mut here: BTreeMap<String, Entry> = BTreeMap::new();
            for path in files {
                match read_merged(&path, 0) {
                    Ok(raw) => {
                        if let Err(why) = classify(&path, raw, &mut here) {
                            index.skipped.push((path, why));
                        }
                    }
                    Err(e) => index.skipped.push((path, e.to_string())),
                }
            }
            // A later include path overrides an earlier one.
            index.entries.extend(here);
        }
        Ok(index)
    }

    /// Every indexed name (tasks, groups and tags).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Resolve `--task` arguments: a name containing `.yaml` or naming an existing file is a
    /// YAML (task or group; a group file's members are looked up in this index), anything
    /// else a name in the index. Every task YAML is read and checked here.
    ///
    /// # Errors
    /// [`EvalError::UnknownTask`] with close matches; task and group YAML errors naming the
    /// file and key.
    pub fn resolve(&self, specs: &[String]) -> Result<Selection> {
        let mut sel = Selection::default();
        for spec in specs {
            let as_path = Path::new(spec);
            if spec.contains(".yaml") || as_path.is_file() {
                let raw = read_merged(as_path, 0)?;
                if is_group(&raw) {
                    let name = group_name(as_path, &raw)?;
                    // Without --include-path a group file's members are looked up beside it.
                    let local;
                    let index = if self.roots.is_empty() {
                        let dir = as_path.parent().filter(|d| !d.as_os_str().is_empty());
                        local = Self::build(&[dir.unwrap_or(Path::new(".")).to_path_buf()])?;
                        &local
                    } else {
                        self
                    };
                    index.build_group(&mut sel, as_path, name, raw, &Map::new(), 0)?;
                } else {
                    sel.add_task(TaskConfig::from_raw(as_path, strip_labels(raw))?);
                }
                continue;
            }
            self.build_named(&mut sel, spec, &Map::new(), 0)?;
        }
        Ok(sel)
    }

    fn unknown(&self, name: &str) -> EvalError {
        let mut close: Vec<(usize, &str)> = self
            .names()
            .filter_map(|n| {
                let d = edit_distance(&name.to_lowercase(), &n.to_lowercase());
                let near =
                    d <= (name.chars().count() / 3).max(2) || n.contains(name) || name.contains(n);
                near.then_some((d, n))
            })
            .collect();
        close.sort();
        let close: Vec<&str> = close.into_iter().take(5).map(|(_, n)| n).collect();
        let mut searched = if self.roots.is_empty() {
            "no --include-path given".to_string()
        } else {
            self.roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.skipped.is_empty() {
            searched.push_str(&format!(
                "; {} YAML files there are not tasks or could not be read, e.g. {}: {}",
                self.skipped.len(),
                self.skipped[0].0.display(),
                self.skipped[0].1
            ));
        }
        EvalError::UnknownTask {
            name: name.to_string(),
            searched,
            close: if close.is_empty() {
                String::new()
            } else {
                format!("; close matches: {}", close.join(", "))
            },
        }
    }

    /// Add the task, group or tag `name` (with `overrides` on its tasks); returns the member
    /// it is in a group (a tag: its tasks).
    fn build_named(
        &self,
        sel: &mut Selection,
        name: &str,
        overrides: &Map<String, Value>,
        depth: usize,
    ) -> Result<Vec<Member>> {
        match self.entries.get(name) {
            None => Err(self.unknown(name)),
            Some(Entry::Task(path)) => {
                let mut raw = read_merged(path, 0)?;
                raw.extend(overrides.clone());
                raw.insert("task".into(), Value::String(name.to_string()));
                sel.add_task(TaskConfig::from_raw(path, strip_labels(raw))?);
                Ok(vec![Member::Task(name.to_string())])
            }
            Some(Entry::Group(path, raw)) => {
                self.build_group(sel, path, name.to_string(), raw.clone(), overrides, depth)?;
                Ok(vec![Member::Group(name.to_string())])
            }
            Some(Entry::Tag(tasks)) => {
                let mut members = Vec::new();
                for t in tasks {
                    members.extend(self.build_named(sel, t, overrides, depth + 1)?);
                }
                Ok(members)
            }
        }
    }

    fn build_group(
        &self,
        sel: &mut Selection,
        path: &Path,
        name: String,
        raw: Map<String, Value>,
        overrides: &Map<String, Value>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_GROUP_DEPTH {
            return Err(task_error(
                path,
                "task",
                format!("groups nested more than {MAX_GROUP_DEPTH} deep (a group in itself?)"),
            ));
        }
        if sel.building.contains(&name) {
            return Err(task_error(
                path,
                "task",
                format!("group `{name}` contains itself (through its members)"),
            ));
        }
        if sel.groups.iter().any(|g| g.name == name) {
            return Ok(());
        }
        let Some(Value::Array(items)) = raw.get("task") else {
            return Err(task_error(path, "task", "a group's `task` must be a list"));
        };
        // The group's own non-group keys apply to its tasks; the parent's override them.
        let mut merged: Map<String, Value> = raw
            .iter()
            .filter(|(k, _)| !GROUP_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        merged.extend(overrides.clone());
        let slot = sel.groups.len();
        sel.groups.push(GroupSpec {
            path: path.to_path_buf(),
            name: name.clone(),
            alias: raw
                .get("group_alias")
                .and_then(Value::as_str)
                .map(str::to_string),
            aggregate: parse_aggregate(path, raw.get("aggregate_metric_list"))?,
            members: Vec::new(),
            version: raw.get("metadata").and_then(|m| m.get("version")).cloned(),
        });
        sel.building.insert(name.clone());
        let mut members = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("task[{i}]");
            match item {
                Value::String(n) => {
                    members.extend(self.build_named(sel, n, &merged, depth + 1)?);
                }
                Value::Object(map) if map.contains_key("group") => {
                    let sub = group_name(path, map)?;
                    let mut inline: Map<String, Value> = map.clone();
                    inline.remove("group");
                    if self.entries.contains_key(&sub) {
                        let mut o = merged.clone();
                        o.extend(inline);
                        members.extend(self.build_named(sel, &sub, &o, depth + 1)?);
                    } else {
                        let full = format!("{name}::{sub}");
                        self.build_group(sel, path, full.clone(), map.clone(), &merged, depth + 1)?;
                        members.push(Member::Group(full));
                    }
                }
                Value::Object(map) => {
                    let base = map.get("task").and_then(Value::as_str).ok_or_else(|| {
                        task_error(path, &key, "an inline member needs `task` or `group`")
                    })?;
                    let mut o = merged.clone();
                    o.extend(map.clone());
                    if self.entries.contains_key(base) {
                        o.remove("task");
                        members.extend(self.build_named(sel, base, &o, depth + 1)?);
                    } else {
                        // lm-eval names an inline task after its group.
                        let full = format!("{name}::{base}");
                        let mut raw = merge_include(path, o, 0)?;
                        raw.insert("task".into(), Value::String(full.clone()));
                        sel.add_task(TaskConfig::from_raw(path, strip_labels(raw))?);
                        members.push(Member::Task(full));
                    }
                }
                other => {
                    return Err(task_error(
                        path,
                        &key,
                        format!("a member is a name or a mapping, not {other}"),
                    ));
                }
            }
        }
        sel.building.remove(&name);
        if let Some(g) = sel.groups.get_mut(slot) {
            g.members = members;
        }
        Ok(())
    }
}

fn is_group(raw: &Map<String, Value>) -> bool {
    raw.contains_key("group") && matches!(raw.get("task"), Some(Value::Array(_)))
}

fn group_name(path: &Path, raw: &Map<String, Value>) -> Result<String> {
    raw.get("group")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| task_error(path, "group", "must be a name"))
}

/// lm-eval drops `tag`, `group` and `task_list` from a task's config when it builds it.
fn strip_labels(mut raw: Map<String, Value>) -> Map<String, Value> {
    for key in ["tag", "group", "task_list"] {
        raw.remove(key);
    }
    raw
}

/// Index one YAML: a group, or a task and its tags. `Err` says why it is not a task.
fn classify(
    path: &Path,
    raw: Map<String, Value>,
    index: &mut BTreeMap<String, Entry>,
) -> std::result::Result<(), String> {
    if is_group(&raw) {
        let name = group_name(path, &raw).map_err(|e| e.to_string())?;
        index
            .entry(name)
            .or_insert_with(|| Entry::Group(path.to_path_buf(), raw));
        return Ok(());
    }
    let Some(Value::String(task)) = raw.get("task") else {
        return Err("no `task` name (not a task or group YAML)".into());
    };
    if index.contains_key(task) {
        return Err(format!(
            "task `{task}` is already defined by an earlier file"
        ));
    }
    index.insert(task.clone(), Entry::Task(path.to_path_buf()));
    // Tags, and an old-style `group:` on a task (lm-eval < 0.4.4 read it as a tag).
    let mut labels = strings(raw.get("tag"));
    labels.extend(strings(raw.get("group")));
    for label in labels {
        if let Entry::Tag(tasks) = index
            .entry(label)
            .or_insert_with(|| Entry::Tag(BTreeSet::new()))
        {
            tasks.insert(task.clone());
        }
    }
    Ok(())
}

/// Levenshtein distance over characters (close-match suggestions only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("bio_arc", "bio_arc"), 0);
        assert_eq!(edit_distance("bio_ark", "bio_arc"), 1);
        assert_eq!(edit_distance("bioarc", "bio_arc"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
