//! The physical quantities sensor-normalize understands, their canonical
//! units, and conversion from the units devices report in.

/// A measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// Canonical unit: degrees Celsius.
    Temperature,
    /// Canonical unit: hectopascal.
    Pressure,
    /// Relative humidity; canonical unit: percent.
    Humidity,
}

impl Quantity {
    pub const ALL: [Quantity; 3] = [
        Quantity::Temperature,
        Quantity::Pressure,
        Quantity::Humidity,
    ];

    /// Name used in the config (`ranges.temperature`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Temperature => "temperature",
            Quantity::Pressure => "pressure",
            Quantity::Humidity => "humidity",
        }
    }

    /// Symbol of the canonical unit, for messages.
    pub fn unit(self) -> &'static str {
        match self {
            Quantity::Temperature => "°C",
            Quantity::Pressure => "hPa",
            Quantity::Humidity => "%",
        }
    }

    /// Converts `value` given in `unit` to the canonical unit. Unit names are
    /// case-insensitive; `None` means the canonical unit.
    pub fn to_canonical(self, value: f64, unit: Option<&str>) -> Result<f64, String> {
        let Some(unit) = unit else {
            return Ok(value);
        };
        let lower = unit.trim().to_ascii_lowercase();
        let converted = match (self, lower.as_str()) {
            (Quantity::Temperature, "c" | "°c" | "celsius") => Some(value),
            (Quantity::Temperature, "f" | "°f" | "fahrenheit") => Some((value - 32.0) * 5.0 / 9.0),
            (Quantity::Temperature, "k" | "kelvin") => Some(value - 273.15),
            (Quantity::Pressure, "hpa" | "mbar") => Some(value),
            (Quantity::Pressure, "pa") => Some(value / 100.0),
            (Quantity::Pressure, "kpa") => Some(value * 10.0),
            (Quantity::Pressure, "bar") => Some(value * 1000.0),
            (Quantity::Pressure, "psi") => Some(value * 68.947_572_931_683_6),
            (Quantity::Humidity, "%" | "pct" | "percent") => Some(value),
            (Quantity::Humidity, "fraction") => Some(value * 100.0),
            _ => None,
        };
        converted.ok_or_else(|| format!("unknown {} unit {unit:?}", self.name()))
    }
}

/// One value per quantity.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PerQuantity<T> {
    pub temperature: T,
    pub pressure: T,
    pub humidity: T,
}

impl<T: Copy> PerQuantity<T> {
    /// The same value for every quantity.
    pub const fn splat(value: T) -> Self {
        PerQuantity {
            temperature: value,
            pressure: value,
            humidity: value,
        }
    }
}

impl<T> PerQuantity<T> {
    pub fn get(&self, quantity: Quantity) -> &T {
        match quantity {
            Quantity::Temperature => &self.temperature,
            Quantity::Pressure => &self.pressure,
            Quantity::Humidity => &self.humidity,
        }
    }

    pub fn get_mut(&mut self, quantity: Quantity) -> &mut T {
        match quantity {
            Quantity::Temperature => &mut self.temperature,
            Quantity::Pressure => &mut self.pressure,
            Quantity::Humidity => &mut self.humidity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn temperature_units() {
        let t = Quantity::Temperature;
        assert!(close(t.to_canonical(98.6, Some("F")).unwrap(), 37.0));
        assert!(close(t.to_canonical(-40.0, Some("°F")).unwrap(), -40.0));
        assert!(close(t.to_canonical(273.15, Some("K")).unwrap(), 0.0));
        assert!(close(t.to_canonical(21.5, Some("celsius")).unwrap(), 21.5));
        assert!(close(t.to_canonical(21.5, None).unwrap(), 21.5));
        let err = t.to_canonical(1.0, Some("R")).unwrap_err();
        assert_eq!(err, "unknown temperature unit \"R\"");
    }

    #[test]
    fn pressure_and_humidity_units() {
        let p = Quantity::Pressure;
        assert!(close(
            p.to_canonical(101_325.0, Some("Pa")).unwrap(),
            1013.25
        ));
        assert!(close(
            p.to_canonical(101.325, Some("kPa")).unwrap(),
            1013.25
        ));
        assert!(close(
            p.to_canonical(1.01325, Some("bar")).unwrap(),
            1013.25
        ));
        assert!(close(
            p.to_canonical(1013.25, Some("mbar")).unwrap(),
            1013.25
        ));
        assert!((p.to_canonical(14.6959, Some("psi")).unwrap() - 1013.25).abs() < 0.01);
        assert!(p.to_canonical(1.0, Some("F")).is_err());
        let h = Quantity::Humidity;
        assert!(close(h.to_canonical(0.45, Some("fraction")).unwrap(), 45.0));
        assert!(close(h.to_canonical(45.0, Some("%")).unwrap(), 45.0));
    }
}
