//! `Display` and `FromStr` for the option enums that are spelled as in TRL (`loss_type`, ...).

/// Implements `Display` (TRL's spelling, from `name()`) and `FromStr` (the inverse; an unknown
/// name is an error listing the known ones, from `ALL`) for an enum with those two items.
macro_rules! impl_named {
    ($ty:ty, $what:literal) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::ObjectiveError;

            fn from_str(s: &str) -> $crate::Result<Self> {
                Self::ALL
                    .into_iter()
                    .find(|t| t.name() == s.trim())
                    .ok_or_else(|| {
                        $crate::ObjectiveError::Invalid(format!(
                            concat!("unknown ", $what, " `{}`; expected one of: {}"),
                            s,
                            Self::ALL.map(Self::name).join(", ")
                        ))
                    })
            }
        }
    };
}

pub(crate) use impl_named;
