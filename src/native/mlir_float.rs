//! Floating-point attribute values printed exactly as MLIR's AsmPrinter prints them
//! (`printFloatValue`): `%.6e`-like text when it reads back bit-identically (`1.000000e+00`),
//! else LLVM's `APFloat::toString` shortest-precision form (`9.9999999999999995E-7`), else the
//! bit pattern in hex (infinities, NaN). APFloat's decimal conversion truncates and rounds half
//! up on its own digit string, so it is reproduced here on an exact big integer rather than
//! approximated with Rust's formatter.

/// MLIR's text for an `f64` attribute value.
pub fn f64_text(v: f64) -> String {
    if v.is_finite() {
        let short = to_string(v, 6, 0, false);
        if short.parse::<f64>().ok().map(f64::to_bits) == Some(v.to_bits()) {
            return short;
        }
        let long = to_string(v, 0, 3, true);
        if long.contains('.') {
            return long;
        }
    }
    format!("0x{:016X}", v.to_bits())
}

/// `APFloat::toString(Str, FormatPrecision, FormatMaxPadding, TruncateZero)` for a finite double.
fn to_string(v: f64, precision: usize, max_padding: usize, truncate_zero: bool) -> String {
    let mut out = String::new();
    if v.is_sign_negative() {
        out.push('-');
    }
    if v == 0.0 {
        if max_padding == 0 {
            if truncate_zero {
                out.push_str("0.0E+0");
            } else {
                out.push_str("0.0");
                if precision > 1 {
                    out.push_str(&"0".repeat(precision - 1));
                }
                out.push_str("e+00");
            }
        } else {
            out.push('0');
        }
        return out;
    }
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1u64 << 52) - 1);
    // APFloat keeps denormals with the minimum exponent and no implicit bit.
    let (mut significand, mut exp) = if biased == 0 {
        (fraction, -1022 - 52)
    } else {
        (fraction | (1u64 << 52), biased - 1023 - 52)
    };
    // FormatPrecision = 2 + floor(significandBits / lg2(10)), as "How to Print Floating-Point
    // Numbers Accurately" suggests (53-bit significand → 18).
    let precision = if precision == 0 {
        2 + 53 * 59 / 196
    } else {
        precision
    };
    let tz = significand.trailing_zeros() as i64;
    exp += tz;
    significand >>= tz;
    let mut n = Big::from(significand);
    if exp > 0 {
        n.shl(exp as u32);
        exp = 0;
    } else if exp < 0 {
        for _ in 0..(-exp) {
            n.mul_small(5);
        }
    }
    // Drop decimal digits the precision cannot show (a truncating division, like APFloat).
    let bits_required = (precision * 196).div_ceil(59);
    let active = n.active_bits();
    if active > bits_required {
        let removable = (active - bits_required) * 59 / 196;
        for _ in 0..removable {
            n.divrem_small(10);
        }
        exp += removable as i64;
    }
    // Digits, least significant first, dropping trailing zeros.
    let mut digits: Vec<u8> = Vec::new();
    let mut in_trail = true;
    while !n.is_zero() {
        let d = n.divrem_small(10) as u8;
        if in_trail && d == 0 {
            exp += 1;
        } else {
            digits.push(b'0' + d);
            in_trail = false;
        }
    }
    round_digits(&mut digits, &mut exp, precision);
    let nd = digits.len();
    let scientific = if max_padding == 0 {
        true
    } else if exp >= 0 {
        exp as usize > max_padding || nd + exp as usize > precision
    } else {
        let msd = exp + nd as i64 - 1;
        msd < 0 && (-msd) as usize > max_padding
    };
    let digit = |i: usize| digits[nd - 1 - i] as char;
    if scientific {
        let e = exp + nd as i64 - 1;
        out.push(digit(0));
        out.push('.');
        if nd == 1 && truncate_zero {
            out.push('0');
        } else {
            (1..nd).for_each(|i| out.push(digit(i)));
        }
        if !truncate_zero && precision > nd - 1 {
            out.push_str(&"0".repeat(precision - nd + 1));
        }
        out.push(if truncate_zero { 'E' } else { 'e' });
        out.push(if e >= 0 { '+' } else { '-' });
        let mag = e.unsigned_abs().to_string();
        if !truncate_zero && mag.len() < 2 {
            out.push('0');
        }
        out.push_str(&mag);
        return out;
    }
    if exp >= 0 {
        (0..nd).for_each(|i| out.push(digit(i)));
        out.push_str(&"0".repeat(exp as usize));
        return out;
    }
    let whole = exp + nd as i64;
    let mut i = 0;
    if whole > 0 {
        while i < whole as usize {
            out.push(digit(i));
            i += 1;
        }
        out.push('.');
    } else {
        out.push_str("0.");
        out.push_str(&"0".repeat((-whole) as usize));
    }
    while i < nd {
        out.push(digit(i));
        i += 1;
    }
    out
}

/// APFloat's `AdjustToPrecision` on the digit buffer (least significant first): keep
/// `precision` digits, rounding half up.
fn round_digits(digits: &mut Vec<u8>, exp: &mut i64, precision: usize) {
    let n = digits.len();
    if n <= precision {
        return;
    }
    let mut first = n - precision;
    if digits[first - 1] < b'5' {
        while first < n && digits[first] == b'0' {
            first += 1;
        }
        *exp += first as i64;
        digits.drain(..first);
        return;
    }
    let mut i = first;
    while i < n {
        if digits[i] == b'9' {
            first += 1;
            i += 1;
        } else {
            digits[i] += 1;
            break;
        }
    }
    if first == n {
        *exp += first as i64;
        digits.clear();
        digits.push(b'1');
        return;
    }
    *exp += first as i64;
    digits.drain(..first);
}

/// A little arbitrary-precision unsigned integer (32-bit limbs, least significant first).
struct Big(Vec<u32>);

impl Big {
    fn from(v: u64) -> Big {
        Big(vec![v as u32, (v >> 32) as u32])
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&l| l == 0)
    }

    fn active_bits(&self) -> usize {
        for (i, &l) in self.0.iter().enumerate().rev() {
            if l != 0 {
                return i * 32 + 32 - l.leading_zeros() as usize;
            }
        }
        0
    }

    fn mul_small(&mut self, m: u32) {
        let mut carry = 0u64;
        for l in &mut self.0 {
            let p = *l as u64 * m as u64 + carry;
            *l = p as u32;
            carry = p >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    fn shl(&mut self, bits: u32) {
        for _ in 0..bits {
            self.mul_small(2);
        }
    }

    /// Divides in place; returns the remainder.
    fn divrem_small(&mut self, d: u32) -> u32 {
        let mut rem = 0u64;
        for l in self.0.iter_mut().rev() {
            let cur = (rem << 32) | *l as u64;
            *l = (cur / d as u64) as u32;
            rem = cur % d as u64;
        }
        while self.0.len() > 1 && self.0.last() == Some(&0) {
            self.0.pop();
        }
        rem as u32
    }
}

#[cfg(test)]
mod tests {
    use super::f64_text;

    /// What MLIR's own printer (TPU-MLIR 1.30.2's python bindings, `FloatAttr.get_f64`) prints.
    #[test]
    fn prints_like_mlir() {
        #[allow(clippy::excessive_precision)]
        let cases = [
            (1.0, "1.000000e+00"),
            (-1.0, "-1.000000e+00"),
            (0.0, "0.000000e+00"),
            (1e-06, "9.9999999999999995E-7"),
            (9.999999974752427e-07, "9.9999999747524271E-7"),
            (0.5, "5.000000e-01"),
            (0.125, "1.250000e-01"),
            (0.1, "1.000000e-01"),
            (9.999999747378752e-06, "9.9999997473787516E-6"),
            (0.1767766922712326, "0.1767766922712326"),
            (-3.4028234663852886e+38, "-3.4028234663852886E+38"),
            (f64::NEG_INFINITY, "0xFFF0000000000000"),
            (1000000000.0, "1.000000e+09"),
            (123456789.0, "0x419D6F3454000000"),
            (1e-300, "1.000000e-300"),
            (5e-324, "4.940660e-324"),
            (1e+22, "1.000000e+22"),
            (1.5e+17, "1.500000e+17"),
            (123456.0, "1.234560e+05"),
            (1234567.0, "0x4132D68700000000"),
            (1.234e-05, "1.234000e-05"),
            (-1000000000.0, "-1.000000e+09"),
            (-3.4028234663852886e+38, "-3.4028234663852886E+38"),
            (9.5367431640625e-07, "9.5367431640625E-7"),
            (0.42857142857142855, "0.42857142857142855"),
            (0.3333333333333333, "0.33333333333333331"),
            (1e+17, "1.000000e+17"),
            (1e+18, "1.000000e+18"),
            (1e+16, "1.000000e+16"),
            (1.2345678901234567e+19, "1.2345678901234567E+19"),
            (f64::NAN, "0x7FF8000000000000"),
            (-0.0, "-0.000000e+00"),
            (0.0078125, "7.812500e-03"),
            (7e-05, "6.9999999999999994E-5"),
            (1.0000001, "1.0000001000000001"),
        ];
        for (v, want) in cases {
            assert_eq!(f64_text(v), want, "{v:e}");
        }
    }
}
