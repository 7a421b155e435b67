//! Who a request speaks for, and what they may touch.

use std::collections::BTreeSet;

use creditflow_domain::AccountId;

/// A role granted by a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An end customer: their own account only.
    Customer,
    /// A backend acting for any account (reconcile on a customer's behalf, usage batches).
    Service,
    /// An operator: everything, including adjustments, freezes and rate cards.
    Admin,
    /// Finance: reads everything, changes nothing.
    Finance,
}

impl Role {
    /// Parses a role name as tokens carry it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "customer" => Some(Self::Customer),
            "service" => Some(Self::Service),
            "admin" => Some(Self::Admin),
            "finance" => Some(Self::Finance),
            _ => None,
        }
    }

    /// The name tokens carry.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Service => "service",
            Self::Admin => "admin",
            Self::Finance => "finance",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`; for a customer, the account id.
    pub subject: String,
    /// Roles granted (at least one).
    pub roles: BTreeSet<Role>,
}

/// What a caller may not do, said in words the API returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller lacks the role.
    #[error("this needs the {0} role")]
    Role(&'static str),
    /// A customer asked for someone else's account.
    #[error("customers can only use their own account")]
    OtherAccount,
    /// A service, admin or finance caller must say which account.
    #[error("say which account with accountId")]
    AccountRequired,
    /// The account id is malformed.
    #[error("accountId must be 1 to 64 of A-Z a-z 0-9 _ -")]
    BadAccountId,
}

impl Principal {
    /// True when the caller has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The account a request acts on. Service and admin callers name any account; finance may name any account
    /// for reading (`for_writing = false`); a customer gets their own, and naming another is refused.
    pub fn account(&self, requested: Option<&str>, for_writing: bool) -> Result<AccountId, Denied> {
        let acts_for_anyone =
            self.has(Role::Service) || self.has(Role::Admin) || (!for_writing && self.has(Role::Finance));
        if acts_for_anyone {
            let requested = requested.ok_or(Denied::AccountRequired)?;
            return AccountId::new(requested).map_err(|_| Denied::BadAccountId);
        }
        if !self.has(Role::Customer) {
            return Err(Denied::Role("customer, service or admin"));
        }
        match requested {
            Some(requested) if requested != self.subject => Err(Denied::OtherAccount),
            _ => AccountId::new(self.subject.clone()).map_err(|_| Denied::BadAccountId),
        }
    }

    /// Refuses callers without `role`.
    pub fn require(&self, role: Role) -> Result<(), Denied> {
        if self.has(role) { Ok(()) } else { Err(Denied::Role(role.as_str())) }
    }
}

/// Reads roles from a claim: `"admin"`, `"admin finance"` or `["admin", "finance"]`; unknown names are ignored.
pub(crate) fn roles_from_claim(claim: Option<&serde_json::Value>) -> BTreeSet<Role> {
    match claim {
        Some(serde_json::Value::String(names)) => names.split_whitespace().filter_map(Role::parse).collect(),
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(serde_json::Value::as_str).filter_map(Role::parse).collect()
        }
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, roles: &[Role]) -> Principal {
        Principal { subject: subject.into(), roles: roles.iter().copied().collect() }
    }

    /// (caller, requested, for writing, expected)
    type Row<'a> = (&'a Principal, Option<&'a str>, bool, Result<&'a str, Denied>);

    #[test]
    fn account_access_table() {
        let customer = principal("alice", &[Role::Customer]);
        let service = principal("gateway", &[Role::Service]);
        let finance = principal("fin", &[Role::Finance]);
        let rows: [Row<'_>; 8] = [
            (&customer, None, true, Ok("alice")),
            (&customer, Some("alice"), true, Ok("alice")),
            (&customer, Some("bob"), false, Err(Denied::OtherAccount)),
            (&service, Some("bob"), true, Ok("bob")),
            (&service, None, true, Err(Denied::AccountRequired)),
            (&service, Some("b o b"), true, Err(Denied::BadAccountId)),
            (&finance, Some("bob"), false, Ok("bob")),
            (&finance, Some("bob"), true, Err(Denied::Role("customer, service or admin"))),
        ];
        for (caller, requested, writing, expected) in rows {
            let got = caller.account(requested, writing);
            assert_eq!(got.as_ref().map(AccountId::as_str).map_err(Clone::clone), expected, "{caller:?} {requested:?}");
        }
    }

    #[test]
    fn roles_come_from_strings_and_arrays() {
        let roles = |value: serde_json::Value| roles_from_claim(Some(&value));
        assert_eq!(roles(serde_json::json!("admin")), [Role::Admin].into());
        assert_eq!(roles(serde_json::json!("admin finance root")), [Role::Admin, Role::Finance].into());
        assert_eq!(roles(serde_json::json!(["service", 7, "x"])), [Role::Service].into());
        assert!(roles(serde_json::json!({"admin": true})).is_empty());
        assert!(roles_from_claim(None).is_empty());
    }
}
