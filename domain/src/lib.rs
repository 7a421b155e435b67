//! creditflow's domain: money, rate cards, pricing, credit packs and the ledger posting rules.
//!
//! Everything here is pure (no I/O, no clock reads, no async) so it can be tested exhaustively and shared by every
//! storage backend, the API and the jobs. Storage depends on this crate, never the other way round.

#![warn(clippy::arithmetic_side_effects)]

pub mod batch;
pub mod ledger;
pub mod money;
pub mod packs;
pub mod pricing;
pub mod rate_card;
pub mod rollout;
pub mod settings;
pub mod signature;

pub use batch::{BATCH_EVENTS_MAX, Rejection, UsageEvent};
pub use ledger::{
    AccountId, AccountState, AccountStatus, Decision, Entry, EntryKind, Overdraft, Posting, PostingInvalid,
    PostingOutcome, SpendCap, UsageRecord, decide,
};
pub use money::{Millicredits, Overflow};
pub use packs::{CreditPack, PackCatalog, PackCatalogError};
pub use pricing::{Charge, PricingError, Usage};
pub use rate_card::{RateCard, RateCardError, RateVersion, Rounding, UnitPrice};
pub use rollout::{rollout_bucket, rollout_covers};
pub use settings::{AccountSettings, Autoreload, SettingsError};
