//! Any text given as a rate card is parsed or refused with an error, never a panic; a card that parses prices any
//! quantities of its own units (huge ones included) to a charge or a pricing error, never a panic or a wrap.
#![no_main]

use std::collections::BTreeMap;

use creditflow_domain::RateCard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first eight bytes, when there are enough, choose the quantities; the rest is the document.
    let (seed, document) = if data.len() > 8 { data.split_at(8) } else { (&[][..], data) };
    let Ok(document) = std::str::from_utf8(document) else { return };
    let Ok(card) = RateCard::from_toml(document) else { return };
    let quantity = seed.iter().fold(0u64, |sum, byte| sum.rotate_left(8) ^ u64::from(*byte));
    let Ok(table) = document.parse::<toml::Table>() else { return };
    let Some(models) = table.get("models").and_then(toml::Value::as_table) else { return };
    for (model, units) in models {
        let Some(units) = units.as_table() else { continue };
        for quantities in [quantity, u64::MAX, 0, 1] {
            let usage: BTreeMap<String, u64> = units.keys().map(|unit| (unit.clone(), quantities)).collect();
            let _ = card.charge(model, &usage);
        }
    }
});
