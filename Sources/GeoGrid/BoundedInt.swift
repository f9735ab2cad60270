extension Int {
    /// `value` rounded as `rule` says, clamped to ±2⁵³ (NaN gives 0): a number from a request or a
    /// file never traps the conversion, and a clamped result still compares as out of range
    /// against any real grid or image size.
    public init(bounded value: Double, _ rule: FloatingPointRoundingRule = .towardZero) {
        let limit = 9_007_199_254_740_992.0
        guard !value.isNaN else {
            self = 0
            return
        }
        self = Int(Swift.min(Swift.max(value.rounded(rule), -limit), limit))
    }
}
