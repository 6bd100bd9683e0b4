//! Exact parsing of Kubernetes resource quantities ("512Mi", "2G", "1.5Gi", "100m", "1e3").
//!
//! The grammar is the one of `k8s.io/apimachinery/pkg/api/resource`:
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! signedNumber    ::= number | sign number          sign ::= "+" | "-"
//! number          ::= digits | digits "." digits | digits "." | "." digits
//! suffix          ::= binarySI | decimalExponent | decimalSI
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= m | "" | k | M | G | T | P | E
//! decimalExponent ::= "e" signedInteger | "E" signedInteger
//! ```
//!
//! A parsed quantity is kept as `±mantissa × 10^exp10 × 1024^binary_exp` with an integer
//! mantissa, so no floating point rounding ever happens. Conversions to integers follow
//! Kubernetes' `Quantity.Value()`: a fractional result is rounded up, away from zero
//! ("0.5" → 1, "100m" → 1), and results must fit in a signed 64-bit integer.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Largest number of significant decimal digits a mantissa may have (fits in a `u128`).
const MAX_MANTISSA_DIGITS: usize = 38;

/// Why a quantity string could not be parsed or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("quantity is empty")]
    Empty,
    /// The string contains a space or another whitespace character.
    #[error("quantity {input:?} contains whitespace; write the number and the suffix together, e.g. \"12Mi\"")]
    Whitespace {
        /// The rejected text.
        input: String,
    },
    /// There is no digit before the suffix ("Mi", "-", ".").
    #[error("quantity {input:?} has no number before its suffix")]
    MissingNumber {
        /// The rejected text.
        input: String,
    },
    /// The number part is malformed ("1.2.3", "1..2").
    #[error("quantity {input:?} has a malformed number (at most one decimal point, digits only)")]
    MalformedNumber {
        /// The rejected text.
        input: String,
    },
    /// The suffix is not one of the Kubernetes suffixes.
    #[error("quantity {input:?} has an unknown suffix {suffix:?} (expected one of Ki Mi Gi Ti Pi Ei, m k M G T P E, or an exponent like e3){hint}")]
    UnknownSuffix {
        /// The rejected text.
        input: String,
        /// The part after the number.
        suffix: String,
        /// A suggestion for common mistakes such as "MB", or an empty string.
        hint: &'static str,
    },
    /// The exponent after `e`/`E` is not an integer.
    #[error("quantity {input:?} has a malformed exponent {exponent:?} (expected an integer)")]
    MalformedExponent {
        /// The rejected text.
        input: String,
        /// The part after `e`/`E`.
        exponent: String,
    },
    /// The quantity has too many significant digits or does not fit in 64 bits.
    #[error("quantity {input:?} is too large (the limit is 2^63-1 in the requested unit)")]
    Overflow {
        /// The rejected text.
        input: String,
    },
    /// The quantity is negative where only non-negative values make sense.
    #[error("quantity {input:?} is negative")]
    Negative {
        /// The rejected text.
        input: String,
    },
}

/// A quantity parsed exactly: `±mantissa × 10^exp10 × 1024^binary_exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuantity {
    input: String,
    negative: bool,
    mantissa: u128,
    exp10: i32,
    binary_exp: u32,
}

impl ParsedQuantity {
    /// Parses a quantity string (see the module documentation for the grammar).
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        if input.chars().any(char::is_whitespace) {
            return Err(QuantityError::Whitespace {
                input: input.to_string(),
            });
        }
        let owned = || input.to_string();

        let (negative, unsigned) = match input.as_bytes()[0] {
            b'-' => (true, &input[1..]),
            b'+' => (false, &input[1..]),
            _ => (false, input),
        };

        let int_len = unsigned.bytes().take_while(u8::is_ascii_digit).count();
        let int_digits = &unsigned[..int_len];
        let mut rest = &unsigned[int_len..];
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_digits = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(QuantityError::MissingNumber { input: owned() });
        }
        if rest.starts_with('.') || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QuantityError::MalformedNumber { input: owned() });
        }

        let (suffix_exp10, binary_exp) = parse_suffix(input, rest)?;

        // Significant digits of int.frac, without leading zeros.
        let all_digits: String = int_digits.chars().chain(frac_digits.chars()).collect();
        let significant = all_digits.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        let trailing_zeros = significant.len() - trimmed.len();
        if trimmed.len() > MAX_MANTISSA_DIGITS {
            return Err(QuantityError::Overflow { input: owned() });
        }
        let mantissa = if trimmed.is_empty() {
            0
        } else {
            trimmed
                .parse::<u128>()
                .map_err(|_| QuantityError::Overflow { input: owned() })?
        };
        let frac_len = i32::try_from(frac_digits.len())
            .map_err(|_| QuantityError::Overflow { input: owned() })?;
        let zeros = i32::try_from(trailing_zeros)
            .map_err(|_| QuantityError::Overflow { input: owned() })?;
        let exp10 = suffix_exp10
            .checked_sub(frac_len)
            .and_then(|e| e.checked_add(zeros))
            .ok_or_else(|| QuantityError::Overflow { input: owned() })?;

        Ok(Self {
            input: input.to_string(),
            negative: negative && mantissa != 0,
            mantissa,
            exp10: if mantissa == 0 { 0 } else { exp10 },
            binary_exp,
        })
    }

    /// The text this quantity was parsed from.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// True for zero ("0", "0Mi", "0.0").
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// True for values below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value as an integer, rounded up away from zero like Kubernetes' `Value()`.
    pub fn value(&self) -> Result<i64, QuantityError> {
        self.scaled(0)
    }

    /// The value in thousandths, rounded up away from zero like `MilliValue()`.
    pub fn milli_value(&self) -> Result<i64, QuantityError> {
        self.scaled(3)
    }

    /// The value as a non-negative integer (bytes, counts), rounded up.
    pub fn unsigned_value(&self) -> Result<u64, QuantityError> {
        if self.negative {
            return Err(QuantityError::Negative {
                input: self.input.clone(),
            });
        }
        let value = self.value()?;
        u64::try_from(value).map_err(|_| QuantityError::Negative {
            input: self.input.clone(),
        })
    }

    /// `ceil(|value| × 10^extra_exp10)` with the sign applied, checked against `i64`.
    fn scaled(&self, extra_exp10: i32) -> Result<i64, QuantityError> {
        let overflow = || QuantityError::Overflow {
            input: self.input.clone(),
        };
        let binary_factor = 1024u128.checked_pow(self.binary_exp).ok_or_else(overflow)?;
        let numerator = self
            .mantissa
            .checked_mul(binary_factor)
            .ok_or_else(overflow)?;
        let exp = self.exp10.checked_add(extra_exp10).ok_or_else(overflow)?;
        let magnitude = if exp >= 0 {
            let factor = 10u128
                .checked_pow(exp.unsigned_abs())
                .ok_or_else(overflow)?;
            numerator.checked_mul(factor).ok_or_else(overflow)?
        } else {
            match 10u128.checked_pow(exp.unsigned_abs()) {
                Some(divisor) => {
                    let quotient = numerator / divisor;
                    if numerator % divisor == 0 {
                        quotient
                    } else {
                        quotient + 1
                    }
                }
                // 10^|exp| exceeds u128::MAX >= numerator: 0 < |value| < 1.
                None => u128::from(numerator != 0),
            }
        };
        let magnitude = i64::try_from(magnitude).map_err(|_| overflow())?;
        Ok(if self.negative { -magnitude } else { magnitude })
    }
}

impl fmt::Display for ParsedQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.input)
    }
}

impl std::str::FromStr for ParsedQuantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Returns (decimal exponent, binary exponent) for a suffix.
fn parse_suffix(input: &str, suffix: &str) -> Result<(i32, u32), QuantityError> {
    let known = match suffix {
        "" => Some((0, 0)),
        "m" => Some((-3, 0)),
        "k" => Some((3, 0)),
        "M" => Some((6, 0)),
        "G" => Some((9, 0)),
        "T" => Some((12, 0)),
        "P" => Some((15, 0)),
        "E" => Some((18, 0)),
        "Ki" => Some((0, 1)),
        "Mi" => Some((0, 2)),
        "Gi" => Some((0, 3)),
        "Ti" => Some((0, 4)),
        "Pi" => Some((0, 5)),
        "Ei" => Some((0, 6)),
        _ => None,
    };
    if let Some(exponents) = known {
        return Ok(exponents);
    }
    if let Some(exponent) = suffix.strip_prefix(['e', 'E']) {
        let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuantityError::MalformedExponent {
                input: input.to_string(),
                exponent: exponent.to_string(),
            });
        }
        let value = exponent
            .parse::<i32>()
            .map_err(|_| QuantityError::Overflow {
                input: input.to_string(),
            })?;
        return Ok((value, 0));
    }
    Err(QuantityError::UnknownSuffix {
        input: input.to_string(),
        suffix: suffix.to_string(),
        hint: suffix_hint(suffix),
    })
}

/// Suggestions for suffixes people often write by habit.
fn suffix_hint(suffix: &str) -> &'static str {
    match suffix {
        "KB" | "kB" | "K" => "; for kilobytes use k (1000) or Ki (1024)",
        "MB" => "; for megabytes use M (10^6) or Mi (2^20)",
        "GB" => "; for gigabytes use G (10^9) or Gi (2^30)",
        "TB" => "; for terabytes use T (10^12) or Ti (2^40)",
        "KiB" | "MiB" | "GiB" | "TiB" => "; drop the trailing B (Ki, Mi, Gi, Ti)",
        "B" => "; plain bytes take no suffix",
        "g" | "mi" | "gi" | "ki" | "ti" => "; suffixes are case-sensitive (Ki Mi Gi Ti, k M G T)",
        _ => "",
    }
}

/// Parses a quantity and returns it as a non-negative integer (bytes, counts), rounded up.
pub fn parse_unsigned(text: &str) -> Result<u64, QuantityError> {
    ParsedQuantity::parse(text)?.unsigned_value()
}

/// [`parse_unsigned`] for a Kubernetes [`Quantity`] (memory sizes, disk capacities).
pub fn to_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    parse_unsigned(&quantity.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_table() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1),
            ("512Mi", 512 << 20),
            ("2G", 2_000_000_000),
            ("1.5Gi", 3 << 29),
            ("100m", 1),
            ("1500m", 2),
            ("1e3", 1000),
            ("1E3", 1000),
            ("1e+3", 1000),
            ("5e-1", 1),
            ("0.5", 1),
            ("+7", 7),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1Ti", 1 << 40),
            ("1Ei", 1 << 60),
            ("1E", 1_000_000_000_000_000_000),
            (".5Ki", 512),
            ("3.", 3),
            ("0.1Ki", 103),
            ("-1", -1),
            ("-0.5", -1),
            ("-1Gi", -(1 << 30)),
            ("0001Mi", 1 << 20),
            ("1000000000000000000000e-21", 1),
            ("1e-400", 1),
            ("0e400", 0),
            ("9223372036854775807", i64::MAX),
        ];
        for (input, want) in table {
            let q = ParsedQuantity::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(q.value(), Ok(*want), "value of {input}");
        }
    }

    #[test]
    fn milli_value_table() {
        let table: &[(&str, i64)] = &[
            ("100m", 100),
            ("0.5", 500),
            ("1", 1000),
            ("2.0005", 2001),
            ("1e-4", 1),
            ("-100m", -100),
        ];
        for (input, want) in table {
            let q = ParsedQuantity::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(q.milli_value(), Ok(*want), "milli of {input}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(ParsedQuantity::parse(""), Err(QuantityError::Empty));
        assert!(matches!(
            ParsedQuantity::parse("12 MB"),
            Err(QuantityError::Whitespace { .. })
        ));
        match ParsedQuantity::parse("12MB") {
            Err(QuantityError::UnknownSuffix { suffix, hint, .. }) => {
                assert_eq!(suffix, "MB");
                assert!(hint.contains("Mi"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            ParsedQuantity::parse("Mi"),
            Err(QuantityError::MissingNumber { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("-"),
            Err(QuantityError::MissingNumber { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("."),
            Err(QuantityError::MissingNumber { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("1.2.3"),
            Err(QuantityError::MalformedNumber { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("1e"),
            Err(QuantityError::MalformedExponent { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("1e1.5"),
            Err(QuantityError::MalformedExponent { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("1Mii"),
            Err(QuantityError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("--1"),
            Err(QuantityError::MissingNumber { .. })
        ));
    }

    #[test]
    fn overflow_is_reported() {
        for input in [
            "8Ei",
            "9223372036854775808",
            "1e19",
            "1e99999999999",
            "123456789012345678901234567890123456789012",
        ] {
            let result = ParsedQuantity::parse(input).and_then(|q| q.value());
            assert!(
                matches!(result, Err(QuantityError::Overflow { .. })),
                "{input}: {result:?}"
            );
        }
        // Too large in milli units, fine as a plain value.
        let q = ParsedQuantity::parse("9e17").unwrap();
        assert_eq!(q.value(), Ok(900_000_000_000_000_000));
        assert!(matches!(
            q.milli_value(),
            Err(QuantityError::Overflow { .. })
        ));
    }

    #[test]
    fn unsigned_rejects_negative_values() {
        assert!(matches!(
            parse_unsigned("-1Gi"),
            Err(QuantityError::Negative { .. })
        ));
        assert_eq!(parse_unsigned("-0"), Ok(0));
        assert_eq!(to_bytes(&Quantity("64Mi".into())), Ok(64 << 20));
    }

    #[test]
    fn error_messages_say_what() {
        let e = ParsedQuantity::parse("12 MB").unwrap_err().to_string();
        assert!(e.contains("\"12 MB\"") && e.contains("whitespace"), "{e}");
        let e = ParsedQuantity::parse("8Ei")
            .and_then(|q| q.value())
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
    }
}
