//! Which accounts a rate card rollout covers: those on its allowlist, and those whose stable bucket (0 to 99) for
//! the version is below its percentage. A bucket depends only on the version and the account, so raising a
//! rollout's percentage from 5 to 20 keeps the first 5% and adds to them.

use crate::ledger::AccountId;
use crate::rate_card::RateVersion;

/// The account's bucket, 0 to 99, for rollouts of `version` (FNV-1a over `version:account`).
pub fn rollout_bucket(version: &RateVersion, account: &AccountId) -> u8 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let text = format!("{version}:{account}");
    let hash = text.bytes().fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    u8::try_from(hash % 100).unwrap_or(0)
}

/// True when a rollout of `version` to `percentage` percent plus `allowlist` covers `account`.
pub fn rollout_covers(version: &RateVersion, percentage: u8, allowlist: &[AccountId], account: &AccountId) -> bool {
    allowlist.contains(account) || rollout_bucket(version, account) < percentage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_spread_and_nested() {
        let version = RateVersion::new("v2").expect("valid");
        let accounts: Vec<AccountId> =
            (0..10_000).map(|n| AccountId::new(format!("acct_{n}")).expect("valid")).collect();
        let covered = |percentage: u8| accounts.iter().filter(|a| rollout_covers(&version, percentage, &[], a)).count();
        assert_eq!(covered(0), 0);
        assert_eq!(covered(100), 10_000);
        let twenty = covered(20);
        assert!((1_700..=2_300).contains(&twenty), "about a fifth: {twenty}");
        for account in &accounts {
            if rollout_covers(&version, 5, &[], account) {
                assert!(rollout_covers(&version, 20, &[], account), "raising the share keeps who had it");
            }
        }
        let listed = AccountId::new("vip").expect("valid");
        assert!(rollout_covers(&version, 0, std::slice::from_ref(&listed), &listed));
        assert_eq!(rollout_bucket(&version, &listed), rollout_bucket(&version, &listed));
    }
}
