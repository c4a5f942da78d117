//! `report`: every section's table (and criterion's figures) gathered into one
//! file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::bail;
use serde_json::Value;

use crate::Common;

pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "n/a".to_owned())
}

pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.0} GiB", kib / 1048576.0),
        );
    format!(
        "| | |\n|---|---|\n| CPU | {model}, {cpus} vCPU |\n| memory | {memory} |\n| kernel | {} |\n| rustc | {} |\n| PostgreSQL | {} |\n| wrk | {} |\n| oha | {} |\n",
        command_line("uname", &["-sr"]),
        command_line("rustc", &["--version"]),
        command_line("psql", &["--version"]),
        Command::new("wrk")
            .arg("-v")
            .output()
            .ok()
            .and_then(
                |o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l
                    .split(" [")
                    .next()
                    .unwrap_or(l)
                    .to_owned())
            )
            .unwrap_or_else(|| "n/a".to_owned()),
        command_line("oha", &["--version"]),
    )
}

/// Criterion's estimates for `config_read`, as a table (ns per read).
pub(crate) fn criterion_table(dir: &Path) -> anyhow::Result<String> {
    let group = dir.join("config_read");
    let mut rows: BTreeMap<(String, String), (f64, f64, f64)> = BTreeMap::new();
    let mut stack = vec![group.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    let bench: Value = serde_json::from_str(&std::fs::read_to_string(
                        path.join("benchmark.json"),
                    )?)?;
                    let est: Value = serde_json::from_str(&std::fs::read_to_string(
                        path.join("estimates.json"),
                    )?)?;
                    let m = &est["median"];
                    rows.insert(
                        (
                            bench["function_id"].as_str().unwrap_or("?").to_owned(),
                            bench["value_str"].as_str().unwrap_or("?").to_owned(),
                        ),
                        (
                            m["point_estimate"].as_f64().unwrap_or(f64::NAN),
                            m["confidence_interval"]["lower_bound"]
                                .as_f64()
                                .unwrap_or(f64::NAN),
                            m["confidence_interval"]["upper_bound"]
                                .as_f64()
                                .unwrap_or(f64::NAN),
                        ),
                    );
                } else if path
                    .file_name()
                    .is_some_and(|n| n != "report" && n != "base")
                {
                    stack.push(path);
                }
            }
        }
    }
    if rows.is_empty() {
        bail!("no criterion results under {}", group.display());
    }
    let columns = [
        "readers=1,writer=none",
        "readers=2,writer=none",
        "readers=1,writer=1000/s",
        "readers=2,writer=1000/s",
    ];
    let mut table = String::new();
    writeln!(
        table,
        "### Config read cost (criterion)\n\n\
         One read = get at the current configuration and touch a field, as a request does. Time per read \
         as one reader thread sees it (criterion's median over 30 samples, 95% confidence interval in brackets), \
         with 1 or 2 reader threads and with or without a writer storing a new configuration 1,000 times a second.\n"
    )?;
    writeln!(
        table,
        "| mechanism | 1 reader, ns | 2 readers, ns | 1 reader + writer, ns | 2 readers + writer, ns |\n|---|---|---|---|---|"
    )?;
    for name in kiln_bench::CONFIG_READ_MECHANISMS {
        let cells: Vec<String> = columns
            .iter()
            .map(|col| {
                rows.get(&(name.to_owned(), (*col).to_owned()))
                    .or_else(|| rows.get(&(name.to_owned(), col.replace('/', "_"))))
                    .map_or_else(
                        || "n/a".to_owned(),
                        |(m, lo, hi)| format!("{m:.1} ({lo:.1}–{hi:.1})"),
                    )
            })
            .collect();
        writeln!(table, "| `{name}` | {} |", cells.join(" | "))?;
    }
    Ok(table)
}

pub(crate) fn report(c: &Common, criterion: &Path) -> anyhow::Result<()> {
    let mut out = String::new();
    writeln!(out, "## Machine\n\n{}", machine())?;
    match criterion_table(criterion) {
        Ok(t) => writeln!(out, "{t}")?,
        Err(e) => writeln!(out, "### Config read cost\n\nnot measured: {e}\n")?,
    }
    for name in [
        "overhead",
        "instructions",
        "db",
        "coldstart",
        "startup",
        "reload",
        "save-to-serve",
        "anchors",
        "restart",
        "memory",
    ] {
        match std::fs::read_to_string(c.out.join(format!("{name}.md"))) {
            Ok(t) => writeln!(out, "{t}")?,
            Err(_) => writeln!(out, "### {name}\n\nnot measured in this run.\n")?,
        }
    }
    let path = c.out.join("report.md");
    std::fs::write(&path, &out)?;
    println!("{out}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
