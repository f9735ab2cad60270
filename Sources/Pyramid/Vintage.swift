import Foundation

/// A millésime: when a tileset's imagery was flown, as an ISO 8601 year (`2021`), month
/// (`2024-05`) or date (`2024-05-17`), kept as written. Vintages of one layer are ordered by the
/// first day they denote (`2024` before `2024-05`, which is before `2024-05-17`).
public struct Vintage: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// As written in the tileset file.
    public let text: String
    /// The first day denoted, as year·10⁴ + month·10² + day (`2024-05` → 20240501).
    public let firstDay: Int

    /// Parses `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (a real calendar day); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        let widths = [4, 2, 2]
        guard (1...3).contains(parts.count) else { return nil }
        var numbers: [Int] = []
        for (i, part) in parts.enumerated() {
            guard part.utf8.count == widths[i], part.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(part)
            else { return nil }
            numbers.append(n)
        }
        let year = numbers[0]
        let month = numbers.count > 1 ? numbers[1] : 1
        let day = numbers.count > 2 ? numbers[2] : 1
        guard year >= 1, (1...12).contains(month), (1...Self.days(in: month, of: year)).contains(day) else {
            return nil
        }
        self.text = text
        firstDay = year * 10_000 + month * 100 + day
    }

    /// Parses or explains why not, for error messages naming where the value came from.
    public static func parse(_ text: String, what: String) throws -> Vintage {
        guard let v = Vintage(text) else {
            throw VintageError(
                "\(what) '\(text)' is not an ISO 8601 year, month or date (YYYY, YYYY-MM or YYYY-MM-DD)")
        }
        return v
    }

    /// The first day of an ISO 8601 instant (`2024-05-17`, `2024-05-17T10:00:00Z`, `2024-05`,
    /// `2024`) as year·10⁴ + month·10² + day; nil when it is not one. A time of day is ignored:
    /// vintages are days at the finest.
    public static func day(ofInstant text: String) -> Int? {
        let date = text.split(separator: "T", maxSplits: 1).first.map(String.init) ?? text
        return Vintage(date)?.firstDay
    }

    private static func days(in month: Int, of year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    public static func < (a: Vintage, b: Vintage) -> Bool {
        a.firstDay != b.firstDay ? a.firstDay < b.firstDay : a.text.count < b.text.count
    }

    public var description: String { text }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        self = try Self.parse(text, what: "vintage")
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(text)
    }
}

/// A vintage that is not ISO 8601, or a layer whose vintages conflict.
public struct VintageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The layer and vintage a tileset belongs to, checked against the other tilesets of its store:
/// a layer id is not a tileset id, and a layer has each vintage once.
public enum LayerRules {
    /// The problem with `tileset` claiming (`layer`, `vintage`) among `others` (tileset id → its
    /// layer and vintage, if any); nil when there is none.
    public static func conflict(
        tileset: String, layer: String?, vintage: Vintage?, others: [String: (layer: String?, vintage: Vintage?)]
    ) -> String? {
        if let layer {
            if layer == tileset { return "layer '\(layer)' has the id of its own tileset; name the layer otherwise" }
            if others[layer] != nil { return "layer '\(layer)' has the id of tileset '\(layer)' in the store" }
            if let (other, _) = others.first(where: {
                $0.key != tileset && $0.value.layer == layer && $0.value.vintage == vintage
            }) {
                return "tileset '\(other)' is already vintage \(vintage?.text ?? "(none)") of layer '\(layer)'"
            }
        }
        if let (other, _) = others.first(where: { $0.key != tileset && $0.value.layer == tileset }) {
            return "tileset id '\(tileset)' is the layer of tileset '\(other)' in the store"
        }
        return nil
    }
}
