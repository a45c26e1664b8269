"""What the bot says in Italian: its own words, where the FAQ (the admins' words)
has nothing fitting to say. One file per language with the same keys in each
(tests/test_core/test_phrases.py checks)."""

PHRASES: dict[str, str] = {
    "escalated": (
        "Grazie, ho passato il tuo messaggio al nostro team. Una persona ti risponderà qui il "
        "prima possibile."
    ),
    "escalated_human": (
        "Certo, ti metto in contatto con una persona del nostro team. Ti risponderà qui a breve."
    ),
    "contact_saved": (
        "Grazie, ho salvato il tuo numero: se ci scrivi da questo numero su un altro canale, "
        "sapremo che sei tu."
    ),
    "attachment_only": (
        "Grazie, abbiamo ricevuto il tuo file. Una persona del nostro team lo guarderà e ti "
        "risponderà."
    ),
    "still_waiting": (
        "Il tuo messaggio è stato aggiunto alla richiesta; una persona ti risponderà qui."
    ),
    "escalated_no_desk": (
        "Mi dispiace, non ho una risposta a questa domanda. L'ho annotata per il nostro team, che "
        "le legge tutte."
    ),
    "escalated_human_no_desk": (
        "Ho annotato che vuoi parlare con una persona e l'ho comunicato al nostro team."
    ),
    "complaint": (
        "Mi dispiace davvero. Ho passato il tuo messaggio al nostro team con priorità; una "
        "persona se ne occuperà e ti risponderà qui."
    ),
    "complaint_no_desk": (
        "Mi dispiace davvero. Ho registrato il tuo messaggio per il nostro team con priorità."
    ),
    "in_queue": (
        "Sei ancora in coda: una persona del nostro team ti risponderà qui appena possibile. Nel "
        "frattempo posso rispondere a domande su ordini, spedizioni, resi e pagamenti."
    ),
    "in_queue_opens": "Sei ancora in coda. Il nostro team torna {when} ({tz}) e ti risponderà qui.",
    "clarify": (
        "Puoi dirmi qualcosa in più su cosa ti serve? Per esempio: \"dov'è il mio ordine?\" o "
        "\"come faccio un reso?\""
    ),
    "opted_out": (
        "Fatto: non riceverai più messaggi da noi, a meno che non ci scriva tu. Gli aggiornamenti "
        "sugli ordini continueranno ad arrivarti."
    ),
    "greeting": "Ciao! Come posso aiutarti?",
    "thanks": "Prego! Posso aiutarti con qualcos'altro?",
    "survey_thanks": "Grazie per la tua valutazione! Ci aiuta a migliorare.",
    "goodbye": "A presto, e grazie per averci scritto!",
    "are_you_bot": (
        "Sono l'assistente automatico del negozio. Rispondo subito alle domande più comuni e, se "
        "preferisci una persona, basta chiederlo."
    ),
    "still_here": "Sì, ci sono! Cosa posso fare per te?",
    "name_fallback": "cliente",
    # the desk: after a person resolved, and when the team is away
    "csat_question": (
        "La tua richiesta è stata risolta. Quanto sei soddisfatto del nostro aiuto? Rispondi con "
        "un numero da 1 (per niente) a 5 (molto)."
    ),
    "csat_thanks": "Grazie per il tuo feedback!",
    "out_of_hours": (
        "Il nostro team al momento non è disponibile. Una persona ti risponderà da {when} (ora di "
        "{tz})."
    ),
    "monday": "lunedì",
    "tuesday": "martedì",
    "wednesday": "mercoledì",
    "thursday": "giovedì",
    "friday": "venerdì",
    "saturday": "sabato",
    "sunday": "domenica",
}
