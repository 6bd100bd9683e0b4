//! Seconds since the Unix epoch to and from a proleptic Gregorian UTC date and time, for
//! the RTC. Days are converted with the usual era arithmetic (400-year cycles of 146,097
//! days, years starting in March so the leap day comes last).

/// A calendar date and time of day, all fields in their natural ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
}

const SECONDS_PER_DAY: i64 = 86_400;
const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT_DAYS: i64 = 719_468;

impl DateTime {
    /// The UTC date and time `seconds` after 1970-01-01T00:00:00Z (negative: before).
    pub fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let in_day = seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        // in_day < 86,400, so every part fits a u32.
        let part = |value: i64| u32::try_from(value).unwrap_or(0);
        Self {
            year,
            month,
            day,
            hour: part(in_day / 3600),
            minute: part(in_day / 60 % 60),
            second: part(in_day % 60),
        }
    }

    /// Seconds since the epoch. Fields out of their ranges carry over (month 13 is January
    /// of the next year, day 0 the last day of the previous month), as `mktime` does.
    pub fn to_unix(self) -> i64 {
        let months = i64::from(self.month) - 1;
        let year = self.year + months.div_euclid(12);
        let month = u32::try_from(months.rem_euclid(12) + 1).unwrap_or(1);
        let days = days_from_civil(year, month, 1) + i64::from(self.day) - 1;
        days * SECONDS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Day of the week, 1 = Sunday .. 7 = Saturday (the MC146818's numbering).
    pub fn weekday(self) -> u32 {
        // 1970-01-01 was a Thursday (5).
        let days = self.to_unix().div_euclid(SECONDS_PER_DAY);
        u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0) + 1
    }
}

/// Days since 1970-01-01 of a date with `month` in 1..=12 and `day` counted from 1.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_SHIFT_DAYS
}

/// The (year, month, day) of `days` since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + EPOCH_SHIFT_DAYS;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // month in 1..=12 and day in 1..=31 by construction.
    let small = |value: i64| u32::try_from(value).unwrap_or(1);
    (year, small(month), small(day))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    #[test]
    fn known_instants_convert_both_ways() {
        let cases = [
            (0, at(1970, 1, 1, 0, 0, 0)),
            (951_782_400, at(2000, 2, 29, 0, 0, 0)),
            (1_798_761_599, at(2026, 12, 31, 23, 59, 59)),
            (4_107_542_400, at(2100, 3, 1, 0, 0, 0)),
            (-1, at(1969, 12, 31, 23, 59, 59)),
        ];
        for (seconds, date) in cases {
            assert_eq!(DateTime::from_unix(seconds), date, "{seconds}");
            assert_eq!(date.to_unix(), seconds, "{date:?}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let start = at(1900, 1, 1, 12, 0, 0).to_unix();
        let mut previous = DateTime::from_unix(start - SECONDS_PER_DAY);
        for day in 0..DAYS_PER_ERA {
            let seconds = start + day * SECONDS_PER_DAY;
            let date = DateTime::from_unix(seconds);
            assert_eq!(date.to_unix(), seconds);
            let next_day = date.day == previous.day + 1 && date.month == previous.month;
            let next_month = date.day == 1 && (date.month == previous.month % 12 + 1);
            assert!(next_day || next_month, "{previous:?} -> {date:?}");
            previous = date;
        }
    }

    #[test]
    fn out_of_range_fields_carry_over() {
        assert_eq!(
            at(2026, 13, 1, 0, 0, 0).to_unix(),
            at(2027, 1, 1, 0, 0, 0).to_unix()
        );
        assert_eq!(
            at(2026, 3, 0, 0, 0, 0).to_unix(),
            at(2026, 2, 28, 0, 0, 0).to_unix()
        );
        assert_eq!(
            at(2026, 2, 31, 0, 0, 0).to_unix(),
            at(2026, 3, 3, 0, 0, 0).to_unix()
        );
    }

    #[test]
    fn weekdays_count_from_sunday() {
        assert_eq!(at(1970, 1, 1, 0, 0, 0).weekday(), 5, "a Thursday");
        assert_eq!(at(2026, 12, 4, 23, 0, 0).weekday(), 6, "a Friday");
        assert_eq!(at(2026, 12, 6, 0, 0, 0).weekday(), 1, "a Sunday");
    }
}
