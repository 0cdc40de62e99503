//! User authentication: JWT verification with the algorithm pinned by
//! configuration, and minting of development tokens.
//!
//! The verifier accepts exactly one algorithm: HS256 with
//! `CHORUS_JWT_SECRET`, or RS256/ES256 (chosen by the PEM's key type) with
//! `CHORUS_JWT_PUBLIC_KEY`. A token whose header names another algorithm, or
//! `none`, is refused before any signature check, which closes the classic
//! algorithm-confusion holes.
//!
//! Kept whole past 400 lines: 220 of them are the verifier's unit tests,
//! which belong next to the rules they pin down.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::integer;
use crate::ids::is_valid_user_id;

/// Default clock leeway for `exp` and `nbf`, in seconds (the contract's
/// default).
pub const DEFAULT_JWT_LEEWAY_S: u64 = 30;
/// Largest accepted leeway: an hour of clock skew is already a broken
/// clock, and a larger leeway would keep expired tokens alive for longer
/// than the tokens themselves usually live.
pub const MAX_JWT_LEEWAY_S: u64 = 3600;
/// Shortest HS256 secret, in bytes (contract): 256 bits, the size of the
/// HMAC-SHA256 output; a shorter secret is open to brute force.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Longest display name kept from a token's `name`, in Unicode scalar
/// values (contract); a longer one is cut to this length, never refused.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest avatar URL kept from a token's `avatar`, in Unicode scalar
/// values (contract); a longer one is cut to this length, never refused.
pub const MAX_AVATAR_CHARS: usize = 2048;

/// Token settings shared by both services.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtArgs {
    /// HS256 secret for user tokens (required unless a public key is set).
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Path of a PEM public key (RSA for RS256, EC P-256 for ES256) used
    /// instead of the secret.
    #[arg(long, env = "CHORUS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim, checked when set.
    #[arg(long, env = "CHORUS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, checked when set.
    #[arg(long, env = "CHORUS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds (0-3600).
    #[arg(
        long,
        env = "CHORUS_JWT_LEEWAY_S",
        default_value_t = DEFAULT_JWT_LEEWAY_S,
        value_parser = integer("CHORUS_JWT_LEEWAY_S", 0, MAX_JWT_LEEWAY_S)
    )]
    pub jwt_leeway_s: u64,
}

impl JwtArgs {
    /// Settings for an HS256 secret and nothing else (tests, tools).
    pub fn with_secret(secret: impl Into<String>) -> Self {
        JwtArgs {
            jwt_secret: Some(secret.into()),
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_s: DEFAULT_JWT_LEEWAY_S,
        }
    }
}

/// Why the verifier could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("neither CHORUS_JWT_SECRET nor CHORUS_JWT_PUBLIC_KEY is set")]
    NoKey,
    #[error("CHORUS_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes (it has {0})")]
    ShortSecret(usize),
    #[error("CHORUS_JWT_LEEWAY_S must be at most {MAX_JWT_LEEWAY_S} (it is {0})")]
    Leeway(u64),
    #[error("cannot read the public key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the public key {0} is neither an RSA nor an EC PEM key")]
    BadKey(PathBuf),
}

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("the token's sub must be 1-64 characters of [A-Za-z0-9_.-]")]
    BadSubject,
}

/// Claims as they appear in a Chorus user token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// A token's `aud`: one audience or several (RFC 7519 allows both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Official,
}

/// An authenticated user, as the services use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: String,
    /// Display name (`name` claim, defaulting to the id).
    pub name: String,
    pub avatar: Option<String>,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

impl AuthUser {
    pub fn is_official(&self) -> bool {
        self.role == Role::Official
    }
}

/// Verifies user tokens. Cheap to share behind an `Arc`.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway_s: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds the verifier from configuration; a public key wins over a secret.
    pub fn new(args: &JwtArgs) -> Result<Self, AuthConfigError> {
        let (key, alg) = match (&args.jwt_public_key, &args.jwt_secret) {
            (Some(path), _) => {
                let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
                    path: path.clone(),
                    source,
                })?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, Algorithm::ES256)
                } else {
                    return Err(AuthConfigError::BadKey(path.clone()));
                }
            }
            (None, Some(secret)) if secret.len() < MIN_JWT_SECRET_BYTES => {
                return Err(AuthConfigError::ShortSecret(secret.len()));
            }
            (None, Some(secret)) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            (None, None) => return Err(AuthConfigError::NoKey),
        };
        if args.jwt_leeway_s > MAX_JWT_LEEWAY_S {
            return Err(AuthConfigError::Leeway(args.jwt_leeway_s));
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = args.jwt_leeway_s;
        validation.validate_exp = true;
        // `nbf` is checked when present, with the same leeway as `exp`.
        validation.validate_nbf = true;
        // A configured iss/aud must be present, not merely right when present.
        let mut required = vec!["exp", "sub"];
        match &args.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &args.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            key,
            validation,
            leeway_s: args.jwt_leeway_s,
        })
    }

    /// The configured leeway, so callers can enforce expiry on long-lived
    /// connections the same way verification does.
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Verifies `token` and returns the user it names.
    pub fn verify(&self, token: &str) -> Result<AuthUser, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                kind => AuthError::Invalid(describe(kind)),
            },
        )?;
        let c = data.claims;
        if !is_valid_user_id(&c.sub) {
            return Err(AuthError::BadSubject);
        }
        let role = match c.role.as_deref() {
            Some("official") => Role::Official,
            _ => Role::Member,
        };
        Ok(AuthUser {
            name: c
                .name
                .filter(|n| !n.trim().is_empty())
                .map(|n| cut(n, MAX_NAME_CHARS))
                .unwrap_or_else(|| c.sub.clone()),
            avatar: c
                .avatar
                .filter(|a| !a.is_empty())
                .map(|a| cut(a, MAX_AVATAR_CHARS)),
            id: c.sub,
            role,
            exp: c.exp,
        })
    }
}

/// `s` cut to at most `max` Unicode scalar values.
fn cut(mut s: String, max: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
    }
    s
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "algorithm not accepted".into()
        }
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        ErrorKind::ImmatureSignature => "token not yet valid".into(),
        _ => "malformed token".into(),
    }
}

/// Extracts the token from an `Authorization: Bearer` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Signs an HS256 token: for `chorus-api token`, tests and load tests.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Claims for a user token valid for `ttl_s` seconds from now.
pub fn claims_for(sub: &str, name: Option<&str>, role: Role, ttl_s: u64) -> Claims {
    let now = now_s();
    Claims {
        sub: sub.to_owned(),
        exp: now + ttl_s,
        iat: Some(now),
        name: name.map(str::to_owned),
        avatar: None,
        role: Some(match role {
            Role::Member => "member".into(),
            Role::Official => "official".into(),
        }),
        nbf: None,
        iss: None,
        aud: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-of-at-least-32-bytes!";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtArgs::with_secret(SECRET)).expect("verifier")
    }

    fn b64(s: &str) -> String {
        // URL-safe base64 without padding, enough for hand-made tokens.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &v)| acc | (u32::from(v) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn accepts_a_good_token_and_defaults_name_and_role() {
        let mut c = claims_for("alice", None, Role::Member, 60);
        c.role = None;
        let t = mint_hs256(SECRET, &c).expect("mint");
        let u = verifier().verify(&t).expect("valid");
        assert_eq!(u.id, "alice");
        assert_eq!(u.name, "alice");
        assert_eq!(u.role, Role::Member);
    }

    #[test]
    fn official_role() {
        let t =
            mint_hs256(SECRET, &claims_for("mod", Some("Mod"), Role::Official, 60)).expect("mint");
        let u = verifier().verify(&t).expect("valid");
        assert!(u.is_official());
        assert_eq!(u.name, "Mod");
    }

    #[test]
    fn refuses_wrong_secret_expired_and_bad_sub() {
        let v = verifier();
        let t = mint_hs256("other", &claims_for("alice", None, Role::Member, 60)).expect("mint");
        assert!(matches!(v.verify(&t), Err(AuthError::Invalid(_))));
        let mut c = claims_for("alice", None, Role::Member, 0);
        c.exp = now_s() - 3600;
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert_eq!(v.verify(&t), Err(AuthError::Expired));
        let t = mint_hs256(SECRET, &claims_for("a b", None, Role::Member, 60)).expect("mint");
        assert_eq!(v.verify(&t), Err(AuthError::BadSubject));
    }

    #[test]
    fn leeway_accepts_recently_expired() {
        let mut c = claims_for("alice", None, Role::Member, 0);
        c.exp = now_s() - 10;
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert!(verifier().verify(&t).is_ok());
    }

    #[test]
    fn refuses_alg_none_and_switched_algorithm() {
        let v = verifier();
        let body = format!(r#"{{"sub":"alice","exp":{}}}"#, now_s() + 60);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&body));
        assert!(v.verify(&none).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims_for("alice", None, Role::Member, 60),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("mint");
        assert!(matches!(v.verify(&hs512), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let mut args = JwtArgs::with_secret(SECRET);
        args.jwt_issuer = Some("chorus".into());
        args.jwt_audience = Some("web".into());
        let v = JwtVerifier::new(&args).expect("verifier");
        let mut c = claims_for("alice", None, Role::Member, 60);
        assert!(v.verify(&mint_hs256(SECRET, &c).expect("mint")).is_err());
        c.iss = Some("chorus".into());
        c.aud = Some(Audience::One("web".into()));
        assert!(v.verify(&mint_hs256(SECRET, &c).expect("mint")).is_ok());
        c.aud = Some(Audience::One("mobile".into()));
        assert!(v.verify(&mint_hs256(SECRET, &c).expect("mint")).is_err());
    }

    #[test]
    fn audience_may_be_an_array() {
        let mut args = JwtArgs::with_secret(SECRET);
        args.jwt_audience = Some("web".into());
        let v = JwtVerifier::new(&args).expect("verifier");
        let mut c = claims_for("alice", None, Role::Member, 60);
        c.aud = Some(Audience::Many(vec!["mobile".into(), "web".into()]));
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert_eq!(v.verify(&t).expect("valid").id, "alice");
        // Without a configured audience an array is no reason to refuse.
        assert!(verifier().verify(&t).is_ok());
        c.aud = Some(Audience::Many(vec!["mobile".into(), "tv".into()]));
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert!(matches!(v.verify(&t), Err(AuthError::Invalid(_))));
        c.aud = Some(Audience::Many(Vec::new()));
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert!(v.verify(&t).is_err(), "an empty array names no audience");
    }

    #[test]
    fn not_before_is_honoured_with_the_leeway() {
        let v = verifier();
        let mut c = claims_for("alice", None, Role::Member, 3600);
        c.nbf = Some(now_s() + 600);
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert_eq!(
            v.verify(&t),
            Err(AuthError::Invalid("token not yet valid".into()))
        );
        c.nbf = Some(now_s() + 10);
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert!(v.verify(&t).is_ok(), "within the 30 s leeway");
        c.nbf = Some(now_s() - 10);
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert!(v.verify(&t).is_ok());
    }

    #[test]
    fn long_names_and_avatars_are_cut_not_refused() {
        let mut c = claims_for("alice", Some(&"é".repeat(150)), Role::Member, 60);
        c.avatar = Some(format!("https://x.example/{}", "a".repeat(3000)));
        let t = mint_hs256(SECRET, &c).expect("mint");
        let u = verifier().verify(&t).expect("valid");
        assert_eq!(u.name, "é".repeat(MAX_NAME_CHARS));
        let avatar = u.avatar.expect("avatar kept");
        assert_eq!(avatar.chars().count(), MAX_AVATAR_CHARS);
        assert!(avatar.starts_with("https://x.example/aaa"));
        let mut c = claims_for("bob", Some(&"n".repeat(100)), Role::Member, 60);
        c.avatar = Some("b".repeat(2048));
        let t = mint_hs256(SECRET, &c).expect("mint");
        let u = verifier().verify(&t).expect("valid");
        assert_eq!((u.name.len(), u.avatar.map(|a| a.len())), (100, Some(2048)));
    }

    #[test]
    fn short_secrets_and_huge_leeways_are_configuration_errors() {
        let e = JwtVerifier::new(&JwtArgs::with_secret("x".repeat(31))).expect_err("short");
        assert!(e.to_string().contains("CHORUS_JWT_SECRET"), "{e}");
        assert!(JwtVerifier::new(&JwtArgs::with_secret("")).is_err());
        assert!(JwtVerifier::new(&JwtArgs::with_secret("x".repeat(32))).is_ok());
        let mut args = JwtArgs::with_secret(SECRET);
        args.jwt_leeway_s = MAX_JWT_LEEWAY_S + 1;
        let e = JwtVerifier::new(&args).expect_err("leeway");
        assert!(e.to_string().contains("CHORUS_JWT_LEEWAY_S"), "{e}");
    }

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    #[test]
    fn public_keys_pin_their_algorithm() {
        for (alg, public, private, other) in [
            (
                Algorithm::RS256,
                "rs256-public.pem",
                "rs256-private.pem",
                "es256-public.pem",
            ),
            (
                Algorithm::ES256,
                "es256-public.pem",
                "es256-private.pem",
                "rs256-public.pem",
            ),
        ] {
            let mut args = JwtArgs::with_secret(SECRET);
            args.jwt_public_key = Some(testdata(public));
            let v = JwtVerifier::new(&args).expect("verifier");
            let pem = std::fs::read(testdata(private)).expect("key");
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                _ => EncodingKey::from_ec_pem(&pem),
            }
            .expect("encoding key");
            let claims = claims_for("alice", None, Role::Member, 60);
            let t = jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("mint");
            assert_eq!(v.verify(&t).expect("valid").id, "alice");
            // An HS256 token signed with the public key's bytes (algorithm
            // confusion) and a token from the other key type are refused.
            let public_pem = std::fs::read(testdata(public)).expect("key");
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(&public_pem),
            )
            .expect("mint");
            assert!(v.verify(&confused).is_err());
            args.jwt_public_key = Some(testdata(other));
            let v_other = JwtVerifier::new(&args).expect("verifier");
            assert!(v_other.verify(&t).is_err());
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
