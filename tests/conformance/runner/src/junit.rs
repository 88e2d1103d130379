//! The JUnit XML report, for CI systems.

use crate::Outcome;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// One `<testsuite>` named `suite`, a `<testcase>` per outcome.
pub fn render(suite: &str, outcomes: &[Outcome]) -> String {
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let total: f64 = outcomes.iter().map(|o| o.took.as_secs_f64()).sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n",
        escape(suite),
        outcomes.len()
    );
    for o in outcomes {
        let head = format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(suite),
            escape(&o.name),
            o.took.as_secs_f64()
        );
        match &o.failure {
            None => out.push_str(&format!("{head}/>\n")),
            Some(f) => out.push_str(&format!(
                "{head}>\n    <failure message=\"{}\"/>\n  </testcase>\n",
                escape(f)
            )),
        }
    }
    out.push_str("</testsuite>\n");
    out
}
