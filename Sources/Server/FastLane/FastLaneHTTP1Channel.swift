import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// Hummingbird's HTTP/1 channel with the tile fast lane in front of NIO's HTTP parser, so a stored
/// tile costs no more than finding the end of its request.
struct FastLaneHTTP1Channel: HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let limits: ConnectionLimits
    let fastLane: @Sendable (any EventLoop) -> TileFastLane

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            guard limits.enter() else {
                logger.warning("refused a connection: \(limits.maxConnections) connections are open (max_connections)")
                try channel.pipeline.syncOperations.addHandler(RefuseConnection())
                return try NIOAsyncChannel(
                    wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
            }
            channel.closeFuture.whenComplete { _ in limits.leave() }
            let lane = fastLane(channel.eventLoop)
            try channel.pipeline.syncOperations.addHandler(lane)
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false)
            try channel.pipeline.syncOperations.addHandler(RouterResponses(lane: lane))
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(logger: logger))
            return try NIOAsyncChannel(
                wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    func handle(value asyncChannel: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1 with the tile fast lane in front of the router.
    static func http1(
        limits: ConnectionLimits, fastLane: @escaping @Sendable (any EventLoop) -> TileFastLane
    ) -> HTTPServerBuilder {
        .init { responder in FastLaneHTTP1Channel(responder: responder, limits: limits, fastLane: fastLane) }
    }
}
