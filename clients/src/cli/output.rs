//! How the CLIs print results: aligned plain-text tables for people, the API's JSON (one
//! document per line) with `--json` for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::api::{Cart, Item, Purchase, Rating};

/// Prints `value` as one line of compact JSON.
pub(crate) fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

/// Prints a result: JSON with `--json`, else `human()`.
pub(crate) fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        print_json(value);
    } else {
        print!("{}", human(value));
    }
}

/// Prints the confirmation of a call that has no result (204): `{}` with `--json`.
pub(crate) fn emit_done(json: bool, message: &str) {
    if json {
        println!("{{}}");
    } else {
        println!("{message}");
    }
}

/// Replaces control characters (a server-supplied name could hold terminal escapes).
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Cents as a decimal amount, e.g. `1250` -> `"12.50"`.
pub(crate) fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A left-aligned table with a header row, columns two spaces apart, trailing spaces trimmed.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A table of items.
pub(crate) fn items_table(items: &[Item]) -> String {
    if items.is_empty() {
        return "no items\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                clean(&i.id),
                clean(&i.name),
                i.category.to_string(),
                format!("{:?}", i.condition).to_lowercase(),
                money(i.price_cents),
                i.quantity.to_string(),
                i.seller_id.to_string(),
                format!("+{} -{}", i.feedback.up, i.feedback.down),
                clean(&i.keywords.join(",")),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "CATEGORY",
            "CONDITION",
            "PRICE",
            "QUANTITY",
            "SELLER",
            "FEEDBACK",
            "KEYWORDS",
        ],
        &rows,
    )
}

/// One item.
pub(crate) fn item_table(item: &Item) -> String {
    items_table(std::slice::from_ref(item))
}

/// A cart.
pub(crate) fn cart_text(cart: &Cart) -> String {
    if cart.items.is_empty() {
        return "cart is empty\n".into();
    }
    let rows: Vec<Vec<String>> = cart
        .items
        .iter()
        .map(|l| vec![clean(&l.item_id), l.quantity.to_string()])
        .collect();
    let mut out = table(&["ITEM", "QUANTITY"], &rows);
    let _ = writeln!(out, "saved: {}", if cart.saved { "yes" } else { "no" });
    out
}

/// One purchase: a heading line and its lines.
pub(crate) fn purchase_text(p: &Purchase) -> String {
    let mut out = format!(
        "purchase {} at {}, total {}\n",
        p.purchase_id,
        clean(&p.created_at),
        money(p.total_cents)
    );
    let rows: Vec<Vec<String>> = p
        .lines
        .iter()
        .map(|l| {
            vec![
                clean(&l.item_id),
                clean(&l.name),
                l.seller_id.to_string(),
                l.quantity.to_string(),
                money(l.price_cents),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ITEM", "NAME", "SELLER", "QUANTITY", "PRICE"],
        &rows,
    ));
    out
}

/// Every purchase, newest first.
pub(crate) fn purchases_text(ps: &[Purchase]) -> String {
    if ps.is_empty() {
        return "no purchases\n".into();
    }
    ps.iter().map(purchase_text).collect::<Vec<_>>().join("\n")
}

/// A rating.
pub(crate) fn rating_text(r: &Rating) -> String {
    format!("seller {}: {} up, {} down\n", r.seller_id, r.up, r.down)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["3-17".into(), "lamp".into()],
                vec!["1-2".into(), "é".into()],
            ],
        );
        assert_eq!(t, "ID    NAME\n3-17  lamp\n1-2   é\n");
        assert_eq!(money(1250), "12.50");
        assert_eq!(money(7), "0.07");
        assert_eq!(clean("a\x1b[2Jb"), "a?[2Jb");
    }
}
