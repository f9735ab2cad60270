import Foundation
import Server

/// What one fuzzing run feeds its inputs to. Each property is checked as well as the absence of a
/// crash: a broken one stops the run with the input saved, as a crash would.
enum FuzzTarget: String, CaseIterable {
    /// The fast lane's head framer, in one piece and in two.
    case framer
    /// The fast lane's tile-path parser.
    case route
    /// WMS and WMTS key-value queries through the router, on a small sample store.
    case kvp
    /// The extract request decoder and the extract planner.
    case extract

    /// The target of this run, from DALLAGE_FUZZ_TARGET.
    static let current = fromEnvironment()

    static func fromEnvironment() -> FuzzTarget {
        let name = ProcessInfo.processInfo.environment["DALLAGE_FUZZ_TARGET"] ?? ""
        guard let t = FuzzTarget(rawValue: name) else {
            fatalError("DALLAGE_FUZZ_TARGET must be one of \(allCases.map(\.rawValue))")
        }
        return t
    }

    /// Whether a 5xx or an unparsable XML report stops the run (DALLAGE_FUZZ_STRICT=1): off by
    /// default while known 5xx answers remain, so the run looks for crashes.
    static let strict = ProcessInfo.processInfo.environment["DALLAGE_FUZZ_STRICT"] == "1"

    func run(_ bytes: UnsafeRawBufferPointer) {
        switch self {
        case .framer: Self.frame(bytes)
        case .route: _ = FastRoute.parse(bytes)
        case .kvp: RouterHarness.shared.query(bytes)
        case .extract: ExtractHarness.plan(bytes)
        }
    }

    static func frame(_ bytes: UnsafeRawBufferPointer) {
        let whole = RequestHead.frame(bytes)
        if case .request(let h) = whole {
            precondition(h.length <= bytes.count && h.target.upperBound < h.length && h.target.lowerBound > 0)
            precondition(h.contentLength >= 0)
        }
        // Read in two pieces as the fast lane does: the second search starts three bytes back.
        let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
        let first = RequestHead.frame(UnsafeRawBufferPointer(rebasing: bytes[..<cut]))
        let second = first == .incomplete ? RequestHead.frame(bytes, from: max(0, cut - 3)) : first
        precondition(first == .incomplete || first == whole, "a prefix frames differently")
        precondition(second == whole, "framing depends on where the bytes were cut")
    }
}
