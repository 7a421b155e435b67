//! Table tests of rate card parsing: one row per rule.

use super::*;

const GOOD: &str = r#"
version = "v1"
rounding = "ceil"

[models."gpt-4o"]
input_tokens = "0.0025"
output_tokens = 0.01
images = 3
"#;

#[test]
fn parses_a_good_card() {
    let card = RateCard::from_toml(GOOD).expect("valid card");
    assert_eq!(card.version().as_str(), "v1");
    assert_eq!(card.rounding(), Rounding::Ceil);
    assert_eq!(card.price("gpt-4o", "input_tokens").map(UnitPrice::picocredits), Some(2_500_000_000));
    assert_eq!(card.price("gpt-4o", "output_tokens").map(UnitPrice::picocredits), Some(10_000_000_000));
    assert_eq!(card.price("gpt-4o", "images").map(UnitPrice::picocredits), Some(3 * PICOCREDITS_PER_CREDIT));
    assert_eq!(card.price("gpt-4o", "seconds"), None);
    assert!(!card.has_model("gpt-5"));
}

#[test]
fn errors_name_the_bad_field() {
    // (document, text the error must contain)
    let rows = [
        ("version = \"v 1\"\nrounding = \"ceil\"\n[models.m]\nx = 1", "field `version`"),
        ("version = \"v1\"\nrounding = \"floor\"\n[models.m]\nx = 1", "rounding"),
        ("version = \"v1\"\n[models.m]\nx = 1", "missing field `rounding`"),
        ("version = \"v1\"\nrounding = \"ceil\"\ncolour = 1\n[models.m]\nx = 1", "unknown field `colour`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models]", "field `models`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]", "field `models.m`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = \"-1\"", "field `models.m.x`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = -1", "field `models.m.x`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = \"abc\"", "field `models.m.x`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = true", "found boolean"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = \"0.0000000000001\"", "more than 12 decimal places"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = \"1000000.5\"", "highest unit price"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nInputTokens = 1", "field `models.m.InputTokens`"),
        ("version = \"v1\"\nrounding = \"ceil\"\n[models.m]\nx = 1.", "not valid TOML"),
    ];
    for (document, expected) in rows {
        let error = RateCard::from_toml(document).expect_err(document).to_string();
        assert!(error.contains(expected), "{document:?}: `{error}` lacks `{expected}`");
    }
}

#[test]
fn price_parsing_table() {
    // (text, picocredits) — None means the text must be refused.
    let rows: [(&str, Option<u64>); 11] = [
        ("0", Some(0)),
        ("1", Some(PICOCREDITS_PER_CREDIT)),
        ("0.0025", Some(2_500_000_000)),
        ("0.000000000001", Some(1)),
        ("1000000", Some(1_000_000 * PICOCREDITS_PER_CREDIT)),
        ("1000000.000000000001", None),
        ("99999999999999999999", None),
        ("", None),
        (".5", None),
        ("5.", None),
        ("1e-3", None),
    ];
    for (text, picocredits) in rows {
        assert_eq!(UnitPrice::parse_credits(text).ok().map(UnitPrice::picocredits), picocredits, "{text:?}");
    }
}

#[test]
fn prices_display_as_written() {
    for text in ["0.0025", "3", "0.000000000001", "1000000"] {
        assert_eq!(UnitPrice::parse_credits(text).expect(text).to_string(), text);
    }
}

#[test]
fn the_shipped_default_card_is_valid() {
    let card = RateCard::from_toml(include_str!("../../../config/rate-cards/v1.toml")).expect("shipped v1 card");
    assert_eq!(card.version().as_str(), "v1");
}
