//! `creditflow token`: mints a dev-mode token so a newcomer can call the API in a minute.

use std::process::ExitCode;

use creditflow_api::DevKey;

use crate::cli::TokenArgs;
use crate::config::Loaded;

/// Prints a token for `args`, or explains why there is none (exit 2).
pub(crate) fn print(loaded: &Loaded, args: &TokenArgs) -> ExitCode {
    if !loaded.dev_mode() {
        eprintln!(
            "creditflow: token mints dev-mode tokens only, and this configuration is not in dev mode (an auth key is \
             configured): get tokens from your identity provider"
        );
        return ExitCode::from(2);
    }
    let key = match DevKey::load_or_create(&loaded.config.dev_key_file) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("creditflow: {error}");
            return ExitCode::FAILURE;
        }
    };
    let roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match key.mint(&args.sub, &roles, now, args.ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("creditflow: cannot sign the token: {error}");
            ExitCode::FAILURE
        }
    }
}
