import NIOCore

/// Whole MESSAGE frames for messages that one event loop sends on many calls (fan-out): the
/// frame for a call id is built once, and every call with that id writes the same buffer,
/// one write and no header of its own. Viewers on their own connections mostly share call ids
/// (each opens its first call with id 1), so a thousand viewers cost one copy of a chunk, not
/// a thousand headers beside it. nginx-rtmp shares its chunk chains among players the same way.
///
/// A frame is built the second time a call id asks for the same message, so calls whose ids
/// all differ copy nothing. Confined to one event loop.
public final class SharedFrames: @unchecked Sendable {
    private struct Entry {
        var body: UInt
        var attachment: UInt
        var length: Int
        var payload: RPCPayload
        /// Call ids that asked, with their frame once built. Usually one or two: searched in order.
        var asked: [(callID: UInt32, frame: ByteBuffer?)] = []
    }

    private var entries: [Entry] = []
    private var next = 0
    /// Messages remembered at once: viewers mostly ask for the newest few.
    private static let size = 4
    /// Call ids remembered per message; past that, calls write in parts.
    private static let callIDs = 16

    public init() {}

    /// The whole frame for `payload` on `callID`, or nil when the caller should write it in
    /// parts (the first time this call id asks for it).
    func frame(_ payload: RPCPayload, callID: UInt32, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let body = payload.body.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        let attachment = payload.attachment?.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } ?? 0
        let length = payload.wireLength
        // Entries hold their payload, so an address cannot be reused while it is remembered.
        var index = -1
        let n = entries.count
        for k in 0..<n {
            let i = (next - 1 - k + 2 * n) % n
            if entries[i].body == body && entries[i].attachment == attachment && entries[i].length == length {
                index = i
                break
            }
        }
        if index < 0 {
            let e = Entry(body: body, attachment: attachment, length: length, payload: payload)
            if n < Self.size { entries.append(e); index = n } else { entries[next] = e; index = next }
            next = (index + 1) % Self.size
        }
        guard let k = entries[index].asked.firstIndex(where: { $0.callID == callID }) else {
            if entries[index].asked.count < Self.callIDs { entries[index].asked.append((callID, nil)) }
            return nil
        }
        if let built = entries[index].asked[k].frame { return built }
        let frame = payload.frame(callID: callID)
        var whole = allocator.buffer(capacity: Frame.headerLength + frame.payloadLength)
        FrameEncoder.encode(frame, into: &whole)
        entries[index].asked[k].frame = whole
        return whole
    }
}
