import Foundation
import Hummingbird
import Metrics
import Raster
import Serving
import Synchronization

/// Drops the body of HEAD responses, keeping their length (routes answer HEAD as GET).
struct HeadMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard request.method == .head else { return try await next(request, context) }
        let response = try await next(request, context)
        var headers = response.headers
        if headers[.contentLength] == nil, let length = response.body.contentLength {
            headers[.contentLength] = String(length)
        }
        return Response(status: response.status, headers: headers, body: .init())
    }
}

/// XML and JSON documents, gzipped when the client accepts it (tiles are compressed already).
enum Document {
    static let bytesSent = Counter(label: "dallage_http_response_bytes_total")

    static func response(
        _ bytes: [UInt8], contentType: String, request: Request, cacheControl: String = "public, max-age=60"
    ) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = cacheControl
        headers[.vary] = "Accept-Encoding"
        var body = bytes
        if (request.headers[.acceptEncoding] ?? "").contains("gzip"), bytes.count > 512,
            let gz = try? bytes.withUnsafeBytes({ try Deflate.gzip($0) })
        {
            headers[.contentEncoding] = "gzip"
            body = gz
        }
        bytesSent.increment(by: Int64(body.count))
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    static func json(_ object: Any, request: Request, contentType: String = "application/json") throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return response(Array(data), contentType: contentType, request: request)
    }
}

extension Router {
    /// Registers `handler` for GET and HEAD.
    @discardableResult
    func getOrHead(
        _ path: RouterPath, use handler: @escaping @Sendable (Request, Context) async throws -> some ResponseGenerator
    ) -> Self {
        on(path, method: .get, use: handler)
        on(path, method: .head, use: handler)
        return self
    }
}

extension Router {
    /// Answers the write methods on read-only routes with 405 and `Allow`, instead of a 404 that
    /// would say the resource does not exist.
    func readOnly(_ paths: [RouterPath]) {
        for path in paths {
            for method in [HTTPRequest.Method.post, .put, .patch, .delete] {
                on(path, method: method) { request, _ -> Response in
                    throw ServingError(
                        .methodNotAllowed, "\(request.method) is not allowed here: tiles and maps are read-only")
                }
            }
        }
    }
}

/// Runs blocking work (rendering, writing an extract) on a Dispatch thread, so the cooperative
/// threads that serve tiles are never held by it. At most ``OffloadSlots/shared``'s count run at
/// once; the others wait their turn without holding a thread, so a burst of large WMS maps cannot
/// start a thread — and a 64 MB canvas — per request.
func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    await OffloadSlots.shared.acquire()
    defer { OffloadSlots.shared.release() }
    return try await withCheckedThrowingContinuation { c in
        DispatchQueue.global(qos: .userInitiated).async { c.resume(with: Result { try body() }) }
    }
}

/// A counting semaphore for ``offload``: twice the cores.
final class OffloadSlots: Sendable {
    static let shared = OffloadSlots(count: max(2, 2 * ProcessInfo.processInfo.activeProcessorCount))

    private struct State {
        var free: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }
    private let state: Mutex<State>

    init(count: Int) { state = Mutex(State(free: count)) }

    func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.free > 0 {
                    s.free -= 1
                    return true
                }
                s.waiting.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiting.isEmpty {
                s.free += 1
                return nil
            }
            return s.waiting.removeFirst()
        }
        next?.resume()
    }
}
