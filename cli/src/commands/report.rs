//! The human form of an experiment report: the verdict, one line per criterion, and
//! the KPIs of baseline and candidate side by side (overall, then per host).

use phoenix_wire::report::{ExperimentReport, Fidelity, FidelityKpis, ResourceTest, VariantKpis};

use crate::output::Table;

fn opt(value: Option<f64>, digits: usize) -> String {
    value
        .map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "no data".into())
}

fn change(baseline: f64, candidate: f64) -> String {
    if baseline == 0.0 {
        "-".into()
    } else {
        format!("{:+.1}%", 100.0 * (candidate / baseline - 1.0))
    }
}

fn change_opt(baseline: Option<f64>, candidate: Option<f64>) -> String {
    match (baseline, candidate) {
        (Some(b), Some(c)) => change(b, c),
        _ => "-".into(),
    }
}

fn kpi_rows(table: &mut Table, scope: &str, b: &VariantKpis, c: &VariantKpis) {
    let rows = [
        (
            "series",
            b.series.to_string(),
            c.series.to_string(),
            change(b.series as f64, c.series as f64),
        ),
        (
            "datapoints/min",
            format!("{:.0}", b.datapoints_per_minute),
            format!("{:.0}", c.datapoints_per_minute),
            change(b.datapoints_per_minute, c.datapoints_per_minute),
        ),
        (
            "monthly cost",
            format!("{:.2}", b.monthly_cost),
            format!("{:.2}", c.monthly_cost),
            change(b.monthly_cost, c.monthly_cost),
        ),
        (
            "collector cpu (cores)",
            opt(b.cpu_cores, 4),
            opt(c.cpu_cores, 4),
            change_opt(b.cpu_cores, c.cpu_cores),
        ),
        (
            "collector rss (MiB)",
            opt(b.rss_mib, 1),
            opt(c.rss_mib, 1),
            change_opt(b.rss_mib, c.rss_mib),
        ),
        (
            "critical processes",
            b.critical_processes.join(",").chars().take(30).collect(),
            c.critical_processes.join(",").chars().take(30).collect(),
            String::new(),
        ),
    ];
    for (kpi, baseline, candidate, delta) in rows {
        table.row(vec![
            scope.to_string(),
            kpi.to_string(),
            baseline,
            candidate,
            delta,
        ]);
    }
}

fn test_line(name: &str, test: &Option<ResourceTest>) -> Option<String> {
    let t = test.as_ref()?;
    let method = t.method.map_or("pooled Mann–Whitney U", |m| m.as_str());
    let design = match (t.hosts, t.pairs) {
        (Some(h), Some(p)) if p > 0 => format!("{h} hosts, {p} paired differences"),
        _ => format!("{}+{} samples", t.baseline_samples, t.candidate_samples),
    };
    let ci = match (t.ci_low, t.ci_high, t.confidence) {
        (Some(lo), Some(hi), Some(c)) => format!(" ({:.0}% CI {lo:+.4} to {hi:+.4})", c * 100.0),
        _ => String::new(),
    };
    let p_over = t
        .p_over_allowance
        .map(|p| format!("{p:.4}"))
        .unwrap_or_else(|| "-".into());
    let adjusted = match t.p_adjusted {
        Some(a) if Some(a) != t.p_over_allowance => format!(", Holm-adjusted {a:.4}"),
        _ => String::new(),
    };
    let mut line = format!(
        "  {name}: {method} over {design}: change {:+.4}{ci}, effect size {:+.2}, p={:.4} (two-sided), p={p_over}{adjusted} (candidate above baseline + {})",
        t.shift, t.effect_size, t.p_value, t.allowance
    );
    if let Some(why) = &t.why {
        line.push_str(&format!("\n    why this test: {why}"));
    }
    Some(line)
}

fn fidelity_rows(table: &mut Table, scope: &str, k: &FidelityKpis) {
    let pct = |v: Option<f64>| v.map_or_else(|| "no data".into(), |v| format!("{v:.1}%"));
    table.row(vec![
        scope.to_string(),
        pct(k.cpu_top_k_recall),
        pct(k.memory_top_k_recall),
        pct(k.cpu_total_error),
        pct(k.memory_total_error),
        k.steps.to_string(),
    ]);
}

/// What the candidate still shows: top-k recall and total error, per host.
fn fidelity(f: &Fidelity) -> String {
    let k = f.top_k;
    let mut table = Table::new(&[
        "SCOPE",
        &format!("CPU TOP-{k} RECALL"),
        &format!("MEMORY TOP-{k} RECALL"),
        "CPU TOTAL ERROR",
        "MEMORY TOTAL ERROR",
        "STEPS",
    ]);
    fidelity_rows(&mut table, "all hosts", &f.overall);
    for (host, kpis) in &f.hosts {
        fidelity_rows(&mut table, host, kpis);
    }
    format!(
        "\nFidelity (candidate against baseline, mean over steps of {}s; a series counts when it has a sample in the last {}s):\n{}",
        f.step_seconds,
        f.freshness_seconds,
        table.render()
    )
}

pub fn render(report: &ExperimentReport) -> String {
    let mut out = format!(
        "Experiment {}: verdict {}\nWindow: {} to {} (analyzed {})\n\nCriteria:\n",
        report.experiment,
        report.verdict.as_str().to_uppercase(),
        report.window_start.format("%Y-%m-%d %H:%M:%S"),
        report.window_end.format("%H:%M:%S"),
        report.analyzed_at.format("%H:%M:%S"),
    );
    for c in &report.criteria {
        out.push_str(&format!(
            "  {:<8} {:<18} {}\n",
            c.outcome.as_str(),
            c.criterion,
            c.reason
        ));
    }
    out.push('\n');
    let mut table = Table::new(&["SCOPE", "KPI", "BASELINE", "CANDIDATE", "CHANGE"]);
    kpi_rows(&mut table, "all hosts", &report.baseline, &report.candidate);
    for (host, kpis) in &report.hosts {
        kpi_rows(&mut table, host, &kpis.baseline, &kpis.candidate);
    }
    out.push_str(&table.render());
    if let Some(f) = &report.fidelity {
        out.push_str(&fidelity(f));
    }
    let tests: Vec<String> = [
        test_line("cpu", &report.cpu_test),
        test_line("memory", &report.memory_test),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !tests.is_empty() {
        out.push_str("\nResource tests:\n");
        out.push_str(&tests.join("\n"));
        out.push('\n');
    }
    if let Some(control) = &report.error_control {
        out.push_str(&format!("Across criteria: {}.\n", control.summary));
    }
    out.push_str(&format!(
        "\nCost at {:.2} per million datapoints/min per month.\n",
        report.price_per_million_dpm
    ));
    if !report.ignored_hosts.is_empty() {
        out.push_str(&format!(
            "Left out: samples labelled with this experiment from hosts it does not target: {}.\n",
            report.ignored_hosts.join(", ")
        ));
    }
    if !report.incidents.is_empty() {
        out.push_str("\nIncidents (failed tasks while it deployed and ran):\n");
        for event in &report.incidents {
            out.push_str(&format!(
                "  {}  {}\n",
                event.at.format("%H:%M:%S"),
                event.reason
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fidelity_is_shown_per_host_beside_the_criteria() {
        let report: ExperimentReport = serde_json::from_value(serde_json::json!({
            "experiment": "topk-web", "windowStart": "2025-06-01T12:00:00Z",
            "windowEnd": "2025-06-01T12:01:00Z", "analyzedAt": "2025-06-01T12:01:10Z",
            "verdict": "fail",
            "criteria": [{"criterion": "topKRecall", "outcome": "fail",
                          "reason": "top-10 recall: CPU 40.0% (worst host web-1)"}],
            "baseline": {"series": 10, "datapointsPerMinute": 5.0, "monthlyCost": 0.0,
                         "cpuCores": null, "rssMib": null, "criticalProcesses": []},
            "candidate": {"series": 4, "datapointsPerMinute": 2.0, "monthlyCost": 0.0,
                          "cpuCores": null, "rssMib": null, "criticalProcesses": []},
            "hosts": {}, "cpuTest": null, "memoryTest": null, "pricePerMillionDpm": 1.0,
            "fidelity": {"topK": 10, "stepSeconds": 10.0, "freshnessSeconds": 4.5,
                "overall": {"cpuTopKRecall": 40.0, "memoryTopKRecall": 55.5,
                            "cpuTotalError": 12.25, "memoryTotalError": null, "steps": 6},
                "hosts": {"web-1": {"cpuTopKRecall": 40.0, "memoryTopKRecall": 55.5,
                            "cpuTotalError": 12.25, "memoryTotalError": null, "steps": 6}}}
        }))
        .unwrap();
        let text = render(&report);
        assert!(text.contains("fail     topKRecall"), "{text}");
        assert!(text.contains("CPU TOP-10 RECALL"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("web-1") && l.contains('%'))
            .unwrap_or_else(|| panic!("a fidelity row for web-1: {text}"));
        for cell in ["40.0%", "55.5%", "12.2%", "no data", "6"] {
            assert!(row.contains(cell), "{cell} in {row}");
        }
    }
}
