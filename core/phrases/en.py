"""What the bot says in English: its own words, where the FAQ (the admins' words)
has nothing fitting to say. One file per language with the same keys in each
(tests/test_core/test_phrases.py checks)."""

PHRASES: dict[str, str] = {
    "escalated": (
        "Thanks, I've passed your message to our team. A person will reply here as soon as "
        "possible."
    ),
    "escalated_human": (
        "Of course, I'm connecting you with a person from our team. They will reply here shortly."
    ),
    "contact_saved": (
        "Thanks, I've saved your number: when you write to us from it on another channel, we'll "
        "know it's you."
    ),
    "attachment_only": (
        "Thanks, we received your file. A person from our team will look at it and reply."
    ),
    "still_waiting": "Your message has been added to your request; a person will reply here.",
    "escalated_no_desk": (
        "Sorry, I don't have an answer to that. I've noted your question for our team, who read "
        "every one of them."
    ),
    "escalated_human_no_desk": (
        "I've noted that you'd like to talk to a person and passed it on to our team."
    ),
    "complaint": (
        "I'm really sorry about this. I've passed your message to our team as a priority; a "
        "person will look into it and reply here."
    ),
    "complaint_no_desk": (
        "I'm really sorry about this. I've recorded your message for our team as a priority."
    ),
    "in_queue": (
        "You're still in the queue: a person from our team will reply here as soon as they can. "
        "Meanwhile I can still answer questions about orders, shipping, returns and payments."
    ),
    "in_queue_opens": (
        "You're still in the queue. Our team is back {when} ({tz}) and will reply here then."
    ),
    "clarify": (
        "Could you tell me a little more about what you need? For example: \"where is my order?\" "
        "or \"how do I return an item?\""
    ),
    "opted_out": (
        "Done: you won't get any more messages from us unless you write to us first. Order "
        "updates you asked for still reach you."
    ),
    "greeting": "Hi! How can I help you today?",
    "thanks": "You're welcome! Anything else I can help with?",
    "survey_thanks": "Thank you for your rating! It helps us get better.",
    "goodbye": "Goodbye, and thanks for writing to us!",
    "are_you_bot": (
        "I'm the store's automatic assistant. I answer common questions right away, and if you'd "
        "like a person, just say so."
    ),
    "still_here": "Yes, I'm here! What can I do for you?",
    "name_fallback": "there",
    # the desk: after a person resolved, and when the team is away
    "csat_question": (
        "Your request has been resolved. How happy are you with our help? Reply with a number "
        "from 1 (not at all) to 5 (very)."
    ),
    "csat_thanks": "Thank you for your feedback!",
    "out_of_hours": "Our team is away right now. A person will answer you from {when} ({tz} time).",
    "monday": "Monday",
    "tuesday": "Tuesday",
    "wednesday": "Wednesday",
    "thursday": "Thursday",
    "friday": "Friday",
    "saturday": "Saturday",
    "sunday": "Sunday",
}
