//! Limits on rendering a chat template, so a hostile `tokenizer_config.json` or GGUF
//! `tokenizer.chat_template` cannot hang the process or exhaust memory.
//!
//! minijinja bounds the number of executed instructions (`fuel`) and the recursion depth, but
//! not the size of the values a template builds: `{% set s = s ~ s %}` repeated 40 times needs
//! only 40 instructions and 2^40 bytes. So the compiled instructions are rewritten one for one:
//! the operators that build strings and lists (`+`, `*`, `~`) become calls of checked functions
//! that refuse a result over [`MAX_VALUE_BYTES`] before building it and add every result to a
//! per-render budget ([`MAX_BUILT_BYTES`]); every `{{ ... }}` output goes through a formatter
//! that counts the rendered bytes ([`MAX_OUTPUT_BYTES`]); Python string methods are checked
//! the same way. Literal template text cannot be counted per emit, so the fuel is lowered for
//! templates with long literal chunks: literal output ≤ fuel × longest chunk ≤
//! [`MAX_LITERAL_OUTPUT_BYTES`].
//!
//! The limits are generous for real templates: SmolLM2's ChatML, Llama 3.1's (with tools and
//! dates) and Qwen 2.5's (tools as JSON) execute 15–60 instructions per message, so
//! [`FUEL`] covers conversations of tens of thousands of messages; a rendered conversation
//! of 64 MiB is far beyond any context window (128k tokens ≈ 0.5 MiB of text).

use std::cell::Cell;

use minijinja::machinery::Instruction;
use minijinja::value::ValueKind;
use minijinja::{Error as JinjaError, ErrorKind, Output, State, Value};

/// Instructions one render may execute (about a second of work at most).
pub const FUEL: u64 = 5_000_000;
/// Largest string or list (its strings counted) an operator, filter or method may build.
pub const MAX_VALUE_BYTES: u64 = 64 << 20;
/// Total bytes of all values built by checked operators in one render (garbage included), which
/// bounds the memory a render can hold at once.
pub const MAX_BUILT_BYTES: u64 = 512 << 20;
/// Bytes written by `{{ ... }}` in one render (captured `{% set %}` blocks included).
pub const MAX_OUTPUT_BYTES: u64 = 256 << 20;
/// Bound on literal template text emitted in one render; lowers the fuel of templates with long
/// literal chunks.
pub const MAX_LITERAL_OUTPUT_BYTES: u64 = 256 << 20;
/// Nesting depth of loops, conditions and macro calls (minijinja's default is 500; real chat
/// templates nest fewer than 10 deep).
pub const RECURSION_LIMIT: usize = 100;

/// Prefix of the checked functions; templates may not use it (they could shadow the checks).
pub const RESERVED_PREFIX: &str = "__temper_";
const ADD: &str = "__temper_add";
const MUL: &str = "__temper_mul";
const CONCAT: &str = "__temper_concat";

/// Bytes counted per list item or map entry (the size of a `Value`).
const ITEM_BYTES: u64 = 24;
/// Depth to which nested lists and maps are measured; deeper values count as over the limit.
const MEASURE_DEPTH: usize = 32;

thread_local! {
    /// (bytes built, bytes output) of the render running on this thread.
    static SPENT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Reset the per-render counters; a render runs on one thread from start to end.
pub fn start_render() {
    SPENT.with(|s| s.set((0, 0)));
}

/// The fuel for a template whose longest literal chunk is `longest_literal` bytes.
pub fn fuel_for(longest_literal: usize) -> u64 {
    let per_emit = u64::try_from(longest_literal.max(1)).unwrap_or(u64::MAX);
    FUEL.min(MAX_LITERAL_OUTPUT_BYTES / per_emit).max(1)
}

/// Replace the value-building operators by the checked functions, one instruction for one so
/// jump targets and line numbers stay valid.
pub fn rewrite(instructions: &mut minijinja::machinery::Instructions<'_>) {
    for idx in 0..u32::try_from(instructions.len()).unwrap_or(u32::MAX) {
        let Some(instr) = instructions.get_mut(idx) else {
            break;
        };
        let name = match instr {
            Instruction::Add => ADD,
            Instruction::Mul => MUL,
            Instruction::StringConcat => CONCAT,
            _ => continue,
        };
        *instr = Instruction::CallFunction(name, Some(2));
    }
}

/// minijinja's built-in filters that build values, each re-registered with its result
/// accounted (and, for those that can multiply their input, a bound checked before it runs).
fn builtin_filter(name: &str) -> Option<Value> {
    use minijinja::filters as f;
    Some(match name {
        "lower" => Value::from_function(f::lower),
        "upper" => Value::from_function(f::upper),
        "title" => Value::from_function(f::title),
        "replace" => Value::from_function(f::replace),
        "dictsort" => Value::from_function(f::dictsort),
        "items" => Value::from_function(f::items),
        "reverse" => Value::from_function(f::reverse),
        "trim" => Value::from_function(f::trim),
        "join" => Value::from_function(f::join),
        "split" => Value::from_function(f::split),
        "lines" => Value::from_function(f::lines),
        "default" => Value::from_function(f::default),
        "attr" => Value::from_function(f::attr),
        "first" => Value::from_function(f::first),
        "last" => Value::from_function(f::last),
        "min" => Value::from_function(f::min),
        "max" => Value::from_function(f::max),
        "sort" => Value::from_function(f::sort),
        "list" => Value::from_function(f::list),
        "string" => Value::from_function(f::string),
        "batch" => Value::from_function(f::batch),
        "slice" => Value::from_function(f::slice),
        "sum" => Value::from_function(f::sum),
        "indent" => Value::from_function(f::indent),
        "select" => Value::from_function(f::select),
        "reject" => Value::from_function(f::reject),
        "map" => Value::from_function(f::map),
        "groupby" => Value::from_function(f::groupby),
        "unique" => Value::from_function(f::unique),
        "chain" => Value::from_function(f::chain),
        "zip" => Value::from_function(f::zip),
        "pprint" => Value::from_function(f::pprint),
        "format" => Value::from_function(f::format),
        "tojson" => Value::from_function(f::tojson),

        _ => return None,
    })
}

const FILTERS: &[&str] = &[
    "lower", "upper", "title", "replace", "dictsort", "items", "reverse", "trim", "join", "split",
    "lines", "default", "attr", "first", "last", "min", "max", "sort", "list", "string", "batch",
    "slice", "sum", "indent", "select", "reject", "map", "groupby", "unique", "chain", "zip",
    "pprint", "format", "tojson",
];

/// An upper bound on what filter or method `name` builds from `args` (receiver first), for the
/// ones that can multiply their input; `None` for those whose result is at most a few times
/// their input (checked after they run).
pub fn amplified_bound(name: &str, args: &[Value]) -> Option<u64> {
    let size = |i: usize| args.get(i).map_or(0, measure);
    let num = |i: usize| args.get(i).and_then(Value::as_usize).unwrap_or(0) as u64;
    let input = size(0);
    match name {
        // Every occurrence of `old` (at least one byte each, plus one for an empty `old`)
        // becomes `new`.
        "replace" => Some(input.saturating_add(input.saturating_add(1).saturating_mul(size(2)))),
        // The separator between each pair of items.
        "join" => {
            let items = args.first().and_then(Value::len).unwrap_or(0) as u64;
            Some(input.saturating_add(items.saturating_mul(size(1).max(8))))
        }
        // Width per line, or a fill to a width.
        "indent" | "center" | "ljust" | "rjust" | "zfill" | "expandtabs" => {
            let lines = input.saturating_add(1);
            let width = args
                .iter()
                .skip(1)
                .filter_map(Value::as_usize)
                .max()
                .unwrap_or(8) as u64;
            Some(input.saturating_add(lines.saturating_mul(width.max(8))))
        }
        // Each placeholder (two bytes of the format string at least) may print any argument.
        "format" => {
            let rest: u64 = (1..args.len()).map(size).fold(0, u64::saturating_add);
            Some(input.saturating_add(input.saturating_mul(rest)))
        }
        // Indentation repeated on every line, one line per item at most.
        "tojson" | "pprint" => {
            let indent = num(1).max(8);
            Some(
                input
                    .saturating_mul(8)
                    .saturating_mul(indent.saturating_add(1)),
            )
        }
        _ => None,
    }
}

/// Register the checked functions and the counting formatter.
pub fn install(env: &mut minijinja::Environment<'static>) {
    for &name in FILTERS {
        let Some(original) = builtin_filter(name) else {
            continue;
        };
        env.add_filter(
            name,
            move |state: &State<'_, '_>, args: minijinja::value::Rest<Value>| {
                if let Some(bound) = amplified_bound(name, &args) {
                    precheck(&format!("filter `{name}`"), bound)?;
                }
                account(original.call(state, &args)?)
            },
        );
    }
    env.add_function(ADD, |state: &State<'_, '_>, a: Value, b: Value| {
        let bound = measure(&a).saturating_add(measure(&b));
        checked(state, "+", bound, "a + b", a, b)
    });
    env.add_function(MUL, |state: &State<'_, '_>, a: Value, b: Value| {
        let times = |v: &Value| v.as_usize().map_or(1, |n| n as u64);
        let bound = if is_number(&a) && is_number(&b) {
            0
        } else {
            measure(&a)
                .saturating_mul(times(&b))
                .max(measure(&b).saturating_mul(times(&a)))
        };
        checked(state, "*", bound, "a * b", a, b)
    });
    env.add_function(CONCAT, |state: &State<'_, '_>, a: Value, b: Value| {
        let bound = measure(&a).saturating_add(measure(&b));
        checked(state, "~", bound, "a ~ b", a, b)
    });
    env.set_formatter(
        |out: &mut Output<'_>, state: &State<'_, '_>, value: &Value| {
            let len = measure(value);
            let total = SPENT.with(|s| {
                let (built, output) = s.get();
                let output = output.saturating_add(len);
                s.set((built, output));
                output
            });
            if total > MAX_OUTPUT_BYTES {
                return Err(limit_error(format!(
                    "rendered output exceeds {MAX_OUTPUT_BYTES} bytes"
                )));
            }
            minijinja::escape_formatter(out, state, value)
        },
    );
}

/// Account a value built by a filter or method: refuse it if it is over the limits.
///
/// # Errors
/// The limit it broke.
pub fn account(value: Value) -> Result<Value, JinjaError> {
    precheck("an operation", measure(&value))?;
    charge(held(&value))?;
    Ok(value)
}

/// What a freshly built value newly holds: a string's bytes; a list's item slots (its strings
/// are shared with the operands, not copied).
fn held(value: &Value) -> u64 {
    match value.as_str() {
        Some(s) => s.len() as u64,
        None => ITEM_BYTES.saturating_mul(value.len().unwrap_or(1) as u64),
    }
}

/// Refuse a call whose result would be over [`MAX_VALUE_BYTES`] (`bound` is its size bound).
///
/// # Errors
/// The limit it broke.
pub fn precheck(what: &str, bound: u64) -> Result<(), JinjaError> {
    if bound > MAX_VALUE_BYTES {
        let size = if bound == u64::MAX {
            "too large or deep a value".to_string()
        } else {
            format!("a value of {bound} bytes")
        };
        return Err(limit_error(format!(
            "{what} would build {size}, over the limit of {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

fn charge(bytes: u64) -> Result<(), JinjaError> {
    let total = SPENT.with(|s| {
        let (built, output) = s.get();
        let built = built.saturating_add(bytes);
        s.set((built, output));
        built
    });
    if total > MAX_BUILT_BYTES {
        return Err(limit_error(format!(
            "values built exceed {MAX_BUILT_BYTES} bytes in total"
        )));
    }
    Ok(())
}

fn checked(
    state: &State<'_, '_>,
    op: &str,
    bound: u64,
    expr: &'static str,
    a: Value,
    b: Value,
) -> Result<Value, JinjaError> {
    precheck(&format!("operator `{op}`"), bound)?;
    // The operator itself is minijinja's: evaluate it on the checked operands.
    let compiled = state.env().compile_expression(expr)?;
    let result = compiled.eval(minijinja::context! { a => a, b => b })?;
    // `bound` already covers the result's measure; only its new memory is charged.
    charge(held(&result))?;
    Ok(result)
}

fn is_number(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
}

/// The bytes a value holds in strings (lists and maps summed, shared strings counted at each
/// use, since rendering or joining them copies each use); stops early past the limit.
pub fn measure(value: &Value) -> u64 {
    let mut total = 0u64;
    measure_into(value, 0, &mut total);
    total
}

fn measure_into(value: &Value, depth: usize, total: &mut u64) {
    if *total > MAX_VALUE_BYTES {
        return;
    }
    if depth > MEASURE_DEPTH {
        *total = u64::MAX;
        return;
    }
    match value.kind() {
        ValueKind::String | ValueKind::Bytes => {
            let len = value
                .as_str()
                .map_or_else(|| value.as_bytes().map_or(0, <[u8]>::len), str::len);
            *total = total.saturating_add(len as u64);
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            // A long list is over the limit by its item count alone; do not walk it.
            let slots = ITEM_BYTES.saturating_mul(value.len().unwrap_or(0) as u64);
            if total.saturating_add(slots) > MAX_VALUE_BYTES {
                *total = u64::MAX;
                return;
            }
            let Ok(items) = value.try_iter() else {
                return;
            };
            let is_map = value.kind() == ValueKind::Map;
            for item in items {
                *total = total.saturating_add(ITEM_BYTES);
                if is_map && let Ok(v) = value.get_item(&item) {
                    measure_into(&v, depth + 1, total);
                }
                measure_into(&item, depth + 1, total);
                if *total > MAX_VALUE_BYTES {
                    return;
                }
            }
        }
        _ => *total = total.saturating_add(ITEM_BYTES),
    }
}

fn limit_error(message: String) -> JinjaError {
    JinjaError::new(ErrorKind::InvalidOperation, message)
}
