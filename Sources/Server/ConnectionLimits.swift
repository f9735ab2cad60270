import Foundation
import GeoGrid
import NIOCore
import Synchronization

/// What one client may hold of the server: connections open at once, how long a connection may
/// sit with nothing under way, and how long a request head may take to arrive. A client that
/// opens connections and sends nothing, or a byte now and then (slowloris), is closed; beyond
/// the cap a new connection gets a 503 and is closed, so the server keeps its file descriptors
/// for the clients it serves.
final class ConnectionLimits: Sendable {
    let maxConnections: Int
    let idleTimeout: TimeAmount
    let headerTimeout: TimeAmount
    private let open = Atomic<Int>(0)

    init(maxConnections: Int, idleTimeout: TimeAmount, headerTimeout: TimeAmount) {
        self.maxConnections = max(1, maxConnections)
        self.idleTimeout = idleTimeout
        self.headerTimeout = headerTimeout
    }

    /// From the configuration; the default cap is half the file limit (after raising the soft
    /// limit to the hard one), at most 10,000, leaving the rest for shards, the database and logs.
    convenience init(_ c: ServerConfiguration) {
        let files = Self.raiseFileLimit()
        self.init(
            maxConnections: c.maxConnections ?? min(10_000, max(16, files / 2)),
            idleTimeout: .nanoseconds(Int64(Int(bounded: c.idleTimeoutSeconds * 1e9))),
            headerTimeout: .nanoseconds(Int64(Int(bounded: c.headerTimeoutSeconds * 1e9))))
    }

    /// Connections open now.
    var count: Int { open.load(ordering: .relaxed) }

    /// Counts a new connection in; false (and not counted) when the cap is reached.
    func enter() -> Bool {
        var current = open.load(ordering: .relaxed)
        while current < maxConnections {
            let (exchanged, original) = open.compareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    func leave() { open.subtract(1, ordering: .relaxed) }

    /// Raises the soft limit on open files to the hard limit (as nginx's `worker_rlimit_nofile`
    /// does) and returns it.
    static func raiseFileLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// A complete response with `Connection: close`, for answers given outside any router.
    static func response(_ status: String, detail: String, retryAfter: Int? = nil) -> ByteBuffer {
        let body = "{\"detail\":\"\(detail)\",\"error\":\"\(status.split(separator: " ").dropFirst().joined())\"}"
        var out = ByteBuffer()
        out.writeString("HTTP/1.1 \(status)\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n")
        if let retryAfter { out.writeString("Retry-After: \(retryAfter)\r\n") }
        out.writeString("Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
        return out
    }
}

/// Sits alone in the pipeline of a connection over the cap: answers 503 at once and closes,
/// reading nothing.
final class RefuseConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private var answered = false

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    private func refuse(_ context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        let response = ConnectionLimits.response(
            "503 Service Unavailable", detail: "too many connections; try again", retryAfter: 1)
        context.writeAndFlush(NIOAny(response)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
