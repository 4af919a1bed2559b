"""CompGrid service runtime: what every service shares, so each service holds only its domain."""
