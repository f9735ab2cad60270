import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// The context of every request: Hummingbird's own storage, and the connection it came on, so
/// limits count per connecting address (not per header a client may make up) and long work can
/// stop when the client has gone.
public struct DallageRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The peer of the connection (nil in tests that run the router without a socket).
    public let remoteAddress: SocketAddress?
    /// The connection, watched by work that should stop with it.
    let channel: any Channel

    /// A context for a request arriving on `source.channel`.
    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
        channel = source.channel
    }

    /// Runs `body` with a flag raised when the client closes its side of the connection (or
    /// the connection ends): a client that gave up no longer wants the answer being computed.
    func watchingClient<T>(_ body: (ClientGone) async throws -> T) async throws -> T {
        let gone = ClientGone()
        // Router tests run on a channel that was never connected: nothing to watch there.
        guard remoteAddress != nil else { return try await body(gone) }
        let channel = self.channel
        let watcher = InputClosedWatcher(gone)
        channel.eventLoop.execute {
            guard channel.isActive else { return gone.raise() }
            try? channel.pipeline.syncOperations.addHandler(watcher, position: .first)
        }
        defer { channel.pipeline.removeHandler(watcher, promise: nil) }
        return try await body(gone)
    }
}

/// Set once the client is gone; read from any thread.
final class ClientGone: Sendable {
    private let flag = Mutex(false)
    /// True once the connection's input closed.
    var isRaised: Bool { flag.withLock { $0 } }
    func raise() { flag.withLock { $0 = true } }
}

/// Raises a `ClientGone` when the peer half-closes (the server keeps half-closed connections
/// open, so the close future alone would wait for the answer), then passes every event on.
final class InputClosedWatcher: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny
    let gone: ClientGone
    init(_ gone: ClientGone) { self.gone = gone }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed { gone.raise() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        gone.raise()
        context.fireChannelInactive()
    }
}

/// Addresses and networks (`10.0.0.0/8`, `::1`) of the reverse proxies whose `X-Forwarded-For`
/// is believed.
public struct AddressRanges: Sendable, Equatable {
    struct Network: Sendable, Equatable {
        var bytes: [UInt8]
        var prefix: Int
    }
    var ranges: [Network]

    /// No proxy trusted.
    public static let none = AddressRanges(ranges: [])
    private init(ranges: [Network]) { self.ranges = ranges }

    /// Parses `entries`; throws on the first one that is neither an address nor a network.
    public init(_ entries: [String]) throws {
        ranges = try entries.map { entry in
            let parts = entry.split(separator: "/", maxSplits: 1).map(String.init)
            guard let address = parts.first, let bytes = Self.parse(address) else {
                throw ConfigurationError("'\(entry)' is not an IP address or network")
            }
            var prefix = bytes.count * 8
            if parts.count == 2 {
                guard let p = Int(parts[1]), p >= 0, p <= prefix else {
                    throw ConfigurationError("'\(entry)' has an invalid prefix length")
                }
                prefix = p
            }
            return Network(bytes: bytes, prefix: prefix)
        }
    }

    /// True when `address` lies in one of the ranges.
    public func contains(_ address: String) -> Bool {
        guard let bytes = Self.parse(address) else { return false }
        return ranges.contains { r in
            guard r.bytes.count == bytes.count else { return false }
            let whole = r.prefix / 8
            guard r.bytes[..<whole] == bytes[..<whole] else { return false }
            let rest = r.prefix % 8
            guard rest > 0 else { return true }
            let mask = UInt8(0xFF) << (8 - rest)
            return r.bytes[whole] & mask == bytes[whole] & mask
        }
    }

    /// The 4 or 16 bytes of an address; IPv4-mapped IPv6 addresses count as IPv4.
    static func parse(_ text: String) -> [UInt8]? {
        let s = text.trimmingCharacters(in: .whitespaces)
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, s, &v6) == 1 else { return nil }
        let b = withUnsafeBytes(of: &v6) { Array($0) }
        if b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF { return Array(b[12...]) }
        return b
    }
}

/// A setting that cannot be used.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Who asks for extracts, for per-client limits and job ownership.
enum ClientIdentity {
    static let forwardedFor = HTTPField.Name("X-Forwarded-For")!

    /// The address a request comes from: the connection's peer, or, when that peer is a trusted
    /// proxy, the last address of `X-Forwarded-For` that is not itself a trusted proxy.
    static func address(remote: SocketAddress?, forwardedFor: [String], trusted: AddressRanges) -> String {
        guard let peer = remote?.ipAddress else { return "unknown" }
        guard trusted.contains(peer) else { return peer }
        let hops = forwardedFor.flatMap { $0.split(separator: ",") }.map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        for hop in hops.reversed() where !trusted.contains(hop) {
            // A hop that is no address at all was made up: the proxy is the client we know.
            return AddressRanges.parse(hop) == nil ? peer : hop
        }
        return hops.first ?? peer
    }
}
