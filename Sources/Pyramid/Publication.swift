import Foundation

/// Who may see a tileset's tiles: `publish:` in a tileset file and in `pyramid.json`, spelt the
/// same in both (`all`, `by-status`).
public enum Publication: String, Codable, Sendable, Hashable, CaseIterable {
    /// Everyone, wherever the pyramid has data.
    case all
    /// Only inside the perimeters of projects currently `disponible` (publication gating).
    case byStatus = "by-status"

    /// Refuses an unknown value with the accepted ones: a misspelt `by_status` must stop the file
    /// from loading, not publish everything.
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = Publication(rawValue: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription:
                    "publish must be \(Self.allCases.map(\.rawValue).joined(separator: " or ")), not '\(text)'")
        }
        self = value
    }
}
