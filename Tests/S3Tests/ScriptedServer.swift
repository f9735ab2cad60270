import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An HTTP server on loopback that answers each request with the next answer of a script (the last
/// one repeats), and counts requests: what a real store cannot be made to do on demand (503
/// SlowDown, 500s, silence).
final class ScriptedServer: Sendable {
    /// One scripted answer: a status and an S3 error document, no answer at all, or the connection
    /// closed instead of an answer.
    enum Answer: Sendable {
        case status(Int, code: String? = nil, body: String = "")
        case silence
        case hangUp
    }

    private let channel: any Channel
    private let state: NIOLockedValueBox<(script: [Answer], requests: [HTTPRequestHead])>

    /// The port it listens on (127.0.0.1).
    var port: Int { channel.localAddress?.port ?? 0 }
    /// The requests received so far.
    var requests: [HTTPRequestHead] { state.withLockedValue { $0.requests } }

    init(_ script: [Answer]) async throws {
        let state = NIOLockedValueBox((script: script, requests: [HTTPRequestHead]()))
        self.state = state
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(Handler(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() async throws { try await channel.close() }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let state: NIOLockedValueBox<(script: [Answer], requests: [HTTPRequestHead])>

        init(state: NIOLockedValueBox<(script: [Answer], requests: [HTTPRequestHead])>) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                state.withLockedValue { $0.requests.append(head) }
            case .body:
                break
            case .end:
                let answer = state.withLockedValue { s -> Answer in
                    s.script.count > 1 ? s.script.removeFirst() : (s.script.first ?? .status(200))
                }
                if case .hangUp = answer { context.close(promise: nil) }
                guard case .status(let status, let code, let body) = answer else { return }
                let text =
                    code.map { "<Error><Code>\($0)</Code><Message>scripted \($0)</Message></Error>" } ?? body
                var headers = HTTPHeaders([("content-length", "\(text.utf8.count)"), ("etag", "\"scripted\"")])
                if code != nil { headers.add(name: "content-type", value: "application/xml") }
                context.write(
                    wrapOutboundOut(
                        .head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers))),
                    promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
