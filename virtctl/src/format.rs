//! Text output: ages, tables, `apply` lines and the JSON / YAML renderings of `get`.

use std::time::{SystemTime, UNIX_EPOCH};

use ironvisor_handler_api::proto::{AppliedObject, VmView};
use serde_json::Value;

/// API group of the objects, as printed in `kind.group/name`.
pub const API_GROUP: &str = "ironvisor.io";
/// What an empty table cell shows, as kubectl does.
pub const NONE: &str = "<none>";

/// Why an object could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The daemon's `vm_json` (or `vmi_json`) is not JSON.
    #[error("the node daemon sent an invalid {field} for VM {namespace}/{name}: {source}")]
    InvalidJson {
        /// Namespace of the VM.
        namespace: String,
        /// Name of the VM.
        name: String,
        /// `vm_json` or `vmi_json`.
        field: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Serializing the objects as YAML failed.
    #[error("cannot render the VMs as YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// Serializing the objects as JSON failed.
    #[error("cannot render the VMs as JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A duration in kubectl's short form: `45s`, `3m20s`, `15m`, `2h30m`, `20h`, `4d6h`,
/// `30d`, `2y40d`, `10y`. Precision drops as the duration grows. Slightly negative
/// values (clock skew) read as `0s`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = seconds / 3600;
    let days = hours / 24;
    let years = days / 365;
    let with_rest = |big: i64, big_unit: &str, rest: i64, rest_unit: &str| {
        if rest == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{rest}{rest_unit}")
        }
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        with_rest(minutes, "m", seconds % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        with_rest(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with_rest(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        with_rest(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

/// The age of something created at `created_unix` (seconds), or `<unknown>` when the
/// time is not set (0).
pub fn age(created_unix: i64, now_unix: i64) -> String {
    if created_unix <= 0 {
        return "<unknown>".to_string();
    }
    human_duration(now_unix.saturating_sub(created_unix))
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:30:00Z`, optional fraction, `Z` or a
/// `+hh:mm` offset) into seconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    text.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|timestamp| timestamp.as_second())
}

/// Formats seconds since the Unix epoch as RFC 3339 in UTC (`2024-05-01T12:30:15Z`).
pub fn format_rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|timestamp| timestamp.to_string())
        .unwrap_or_else(|_| format!("@{unix}"))
}

/// A plain-text table laid out like kubectl's: columns separated by at least three
/// spaces, no trailing blanks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with the given header row.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            rows: vec![headers.into_iter().map(Into::into).collect()],
        }
    }

    /// Appends a row.
    pub fn push<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders the table with `gap` spaces at least between columns, each line ending
    /// with a newline.
    pub fn render_with_gap(&self, gap: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + gap;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Renders the table kubectl's way (three spaces between columns).
    pub fn render(&self) -> String {
        self.render_with_gap(3)
    }
}

fn or_none(value: &str) -> String {
    if value.is_empty() {
        NONE.to_string()
    } else {
        value.to_string()
    }
}

fn namespace_of(view: &VmView) -> &str {
    if view.namespace.is_empty() {
        ironvisor_handler_api::DEFAULT_NAMESPACE
    } else {
        &view.namespace
    }
}

/// The `get`/`list` table: `[NAMESPACE] NAME AGE STATUS PHASE IP NODE READY BACKEND`.
pub fn vm_table(vms: &[VmView], show_namespace: bool, now_unix: i64) -> String {
    let mut headers = Vec::new();
    if show_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "AGE", "STATUS", "PHASE", "IP", "NODE", "READY", "BACKEND",
    ]);
    let mut table = Table::new(headers);
    for vm in vms {
        let mut row = Vec::new();
        if show_namespace {
            row.push(namespace_of(vm).to_string());
        }
        row.extend([
            vm.name.clone(),
            age(vm.created_unix, now_unix),
            or_none(&vm.status),
            or_none(&vm.phase),
            or_none(&vm.ip),
            or_none(&vm.node),
            if vm.ready { "True" } else { "False" }.to_string(),
            or_none(&vm.backend),
        ]);
        table.push(row);
    }
    table.render()
}

/// `kind.group/name`, e.g. `virtualmachine.ironvisor.io/small`.
pub fn resource_name(kind: &str, name: &str) -> String {
    let kind = if kind.is_empty() {
        "virtualmachine".to_string()
    } else {
        kind.to_ascii_lowercase()
    };
    format!("{kind}.{API_GROUP}/{name}")
}

/// The line `apply` prints for one object: `virtualmachine.ironvisor.io/small created`.
pub fn applied_line(object: &AppliedObject) -> String {
    format!(
        "{} {}",
        resource_name(&object.kind, &object.name),
        object.action
    )
}

/// The full VirtualMachine of a view, as JSON.
pub fn vm_object(view: &VmView) -> Result<Value, FormatError> {
    parse_object(view, "vm_json", &view.vm_json)
}

/// The VirtualMachineInstance of a view, if the VM has one.
pub fn vmi_object(view: &VmView) -> Result<Option<Value>, FormatError> {
    if view.vmi_json.trim().is_empty() {
        return Ok(None);
    }
    parse_object(view, "vmi_json", &view.vmi_json).map(Some)
}

fn parse_object(view: &VmView, field: &'static str, json: &str) -> Result<Value, FormatError> {
    serde_json::from_str(json).map_err(|source| FormatError::InvalidJson {
        namespace: namespace_of(view).to_string(),
        name: view.name.clone(),
        field,
        source,
    })
}

/// How `get` prints objects when `-o` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectFormat {
    /// Pretty JSON.
    Json,
    /// YAML.
    Yaml,
    /// `virtualmachine.ironvisor.io/NAME` lines.
    Name,
}

/// Renders VMs: one object as itself, several (a list request) wrapped in a
/// Kubernetes `List`, as kubectl does.
pub fn render_objects(
    vms: &[VmView],
    single: bool,
    format: ObjectFormat,
) -> Result<String, FormatError> {
    if format == ObjectFormat::Name {
        return Ok(vms
            .iter()
            .map(|vm| resource_name("VirtualMachine", &vm.name) + "\n")
            .collect());
    }
    let objects = vms.iter().map(vm_object).collect::<Result<Vec<_>, _>>()?;
    let value = match (single, objects.as_slice()) {
        (true, [one]) => one.clone(),
        _ => serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": { "resourceVersion": "" },
            "items": objects,
        }),
    };
    match format {
        ObjectFormat::Json => serde_json::to_string_pretty(&value)
            .map(|s| s + "\n")
            .map_err(FormatError::Json),
        ObjectFormat::Yaml => Ok(serde_norway::to_string(&value)?),
        ObjectFormat::Name => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (2 * 3600 + 30 * 60 + 600 * 3, "3h"),
            (7 * 3600 + 59 * 60, "7h59m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (4 * 86_400 + 6 * 3600, "4d6h"),
            (8 * 86_400, "8d"),
            (729 * 86_400, "729d"),
            (730 * 86_400, "2y"),
            (770 * 86_400, "2y40d"),
            (365 * 8 * 86_400, "8y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected, "{seconds}s");
        }
    }

    #[test]
    fn age_of_unset_time_is_unknown() {
        assert_eq!(age(0, 1000), "<unknown>");
        assert_eq!(age(990, 1000), "10s");
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:30:15.123456Z"),
            Some(1_714_566_615)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T14:30:15+02:00"),
            Some(1_714_566_615)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T10:00:15-02:30"),
            Some(1_714_566_615)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        for t in [0, 951_868_800, 1_714_566_615, 4_102_444_800, -86_400] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(format_rfc3339(1_714_566_615), "2024-05-01T12:30:15Z");
        assert_eq!(format_rfc3339(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn table_pads_columns_and_trims_lines() {
        let mut t = Table::new(["NAME", "AGE", "IP"]);
        t.push(["a", "5s", ""]);
        t.push(["longer-name", "3m", "10.0.0.2"]);
        assert_eq!(
            t.render(),
            "NAME          AGE   IP\n\
             a             5s\n\
             longer-name   3m    10.0.0.2\n"
        );
    }

    fn view(name: &str) -> VmView {
        VmView {
            namespace: "default".into(),
            name: name.into(),
            status: "Running".into(),
            phase: "Running".into(),
            ip: "10.88.0.5".into(),
            node: "node1".into(),
            created_unix: 1000,
            ready: true,
            run_strategy: "Always".into(),
            backend: "qemu-tcg".into(),
            vm_json: format!(r#"{{"kind":"VirtualMachine","metadata":{{"name":"{name}"}}}}"#),
            vmi_json: String::new(),
            events: vec![],
        }
    }

    #[test]
    fn vm_table_columns() {
        let mut stopped = view("db");
        stopped.namespace = "prod".into();
        stopped.status = "Stopped".into();
        stopped.phase.clear();
        stopped.ip.clear();
        stopped.node.clear();
        stopped.backend.clear();
        stopped.ready = false;
        let out = vm_table(&[view("small"), stopped], true, 1000 + 200);
        assert_eq!(
            out,
            "NAMESPACE   NAME    AGE     STATUS    PHASE     IP          NODE     READY   BACKEND\n\
             default     small   3m20s   Running   Running   10.88.0.5   node1    True    qemu-tcg\n\
             prod        db      3m20s   Stopped   <none>    <none>      <none>   False   <none>\n"
        );
        let out = vm_table(&[view("small")], false, 1005);
        assert!(out.starts_with("NAME    AGE   STATUS"), "{out}");
    }

    #[test]
    fn applied_lines() {
        let object = AppliedObject {
            kind: "VirtualMachine".into(),
            namespace: "default".into(),
            name: "small".into(),
            action: "created".into(),
        };
        assert_eq!(
            applied_line(&object),
            "virtualmachine.ironvisor.io/small created"
        );
    }

    #[test]
    fn objects_render_alone_or_as_list() {
        let one = render_objects(&[view("a")], true, ObjectFormat::Json).unwrap();
        let value: Value = serde_json::from_str(&one).unwrap();
        assert_eq!(value["metadata"]["name"], "a");
        let list = render_objects(&[view("a"), view("b")], false, ObjectFormat::Yaml).unwrap();
        let value: Value = serde_norway::from_str(&list).unwrap();
        assert_eq!(value["kind"], "List");
        assert_eq!(value["items"][1]["metadata"]["name"], "b");
        let names = render_objects(&[view("a")], false, ObjectFormat::Name).unwrap();
        assert_eq!(names, "virtualmachine.ironvisor.io/a\n");
        let mut broken = view("x");
        broken.vm_json = "{".into();
        let e = render_objects(&[broken], true, ObjectFormat::Json).unwrap_err();
        assert!(e.to_string().contains("default/x"), "{e}");
    }
}
