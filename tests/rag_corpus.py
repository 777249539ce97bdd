"""A small retrieval benchmark: short passages on distinct topics and questions that paraphrase them.

Written for this project. Each question names the id of the one passage that answers it, and avoids
that passage's key words where it can (a question about bees says "insects that make a sweet food",
not "honeybee"), so that retrieving it takes more than word overlap.
"""

from __future__ import annotations

PASSAGES: dict[str, str] = {
    "honeybees": (
        "A honeybee colony has a single queen, thousands of sterile female workers and a few hundred drones. "
        "Workers find flowers and tell their sisters where they are with a waggle dance whose angle points "
        "towards the food and whose length tells how far away it is."
    ),
    "volcanoes": (
        "Shield volcanoes such as those of Hawaii are built by runny basalt lava that flows a long way before "
        "it cools, which gives them gentle slopes. Stratovolcanoes erupt sticky, gas-rich magma and grow into "
        "steep cones that can explode violently."
    ),
    "sourdough": (
        "A sourdough starter is a mix of flour and water colonised by wild yeasts and lactic acid bacteria. "
        "The bacteria make the acids that give the loaf its tang, and the yeasts release the carbon dioxide "
        "that makes the dough rise. Bakers feed the starter fresh flour every day to keep it active."
    ),
    "photosynthesis": (
        "Plants capture sunlight with chlorophyll in their chloroplasts and use its energy to turn carbon "
        "dioxide and water into sugar. Oxygen is released as a by-product, which is where most of the oxygen "
        "in the air we breathe comes from."
    ),
    "tides": (
        "Ocean tides are raised mainly by the Moon's gravity, which pulls harder on the side of the Earth "
        "facing it. Most coasts see two high waters a day. When the Sun and the Moon line up, at new and full "
        "moon, the tides are larger and are called spring tides."
    ),
    "chess_openings": (
        "The Sicilian Defence answers White's first move of the king's pawn with the c-pawn advanced two "
        "squares. It leads to unbalanced positions where Black fights for the centre from the side, and it "
        "is the most popular reply among strong players."
    ),
    "blood_types": (
        "Human blood groups depend on antigens carried on red blood cells. People with group O have neither "
        "A nor B antigens, so O negative red cells can be given to almost any patient in an emergency, while "
        "AB positive patients can receive red cells from every group."
    ),
    "tcp_handshake": (
        "Before a TCP connection carries data, the client sends a SYN segment, the server replies with "
        "SYN-ACK and the client answers with ACK. This exchange lets both sides agree on their initial "
        "sequence numbers so lost or reordered bytes can be detected."
    ),
    "roman_aqueducts": (
        "Roman engineers supplied their cities with water through aqueducts that ran downhill at a very "
        "gentle, constant gradient over many kilometres. Where a valley crossed the route they built arched "
        "bridges, like the Pont du Gard in southern France."
    ),
    "coffee_roasting": (
        "Green coffee beans are roasted at around 200 degrees Celsius. At the first crack they release "
        "steam and expand; light roasts stop soon after and keep fruity, acidic flavours, while dark roasts "
        "continue to the second crack and taste more bitter and smoky."
    ),
    "black_holes": (
        "A black hole forms when a very massive star collapses at the end of its life. Inside the event "
        "horizon gravity is so strong that not even light can escape, so the object can only be detected "
        "through its effect on nearby gas and stars."
    ),
    "composting": (
        "A garden compost heap works best with a mix of green material rich in nitrogen, such as grass "
        "clippings, and brown material rich in carbon, such as dry leaves and cardboard. Turning the heap "
        "lets air in so that microbes can break it down without bad smells."
    ),
    "marathon_history": (
        "The marathon commemorates the legend of a Greek messenger who ran from the battlefield of Marathon "
        "to Athens to announce a victory. Its distance was fixed at 42.195 kilometres after the 1908 London "
        "Olympics, where the course ran from Windsor Castle to the stadium."
    ),
    "vaccines": (
        "A vaccine trains the immune system by showing it a harmless piece or copy of a pathogen. Memory "
        "cells formed after the shot recognise the real germ later and trigger a fast defence, which is why "
        "vaccinated people rarely become seriously ill."
    ),
    "printing_press": (
        "Around 1450 Johannes Gutenberg in Mainz combined movable metal type, oil-based ink and a screw press "
        "adapted from wine making. Books could then be produced far faster than by hand copying, and printed "
        "texts spread across Europe within a few decades."
    ),
    "octopus": (
        "An octopus has three hearts and blue blood based on copper. Most of its neurons sit in its eight "
        "arms, which can taste and grip on their own, and special skin cells let it change colour and "
        "texture in a fraction of a second to hide from predators."
    ),
    "glaciers": (
        "Glaciers form where more snow falls each winter than melts each summer, so the snow compacts into "
        "ice over many years. Under its own weight the ice slowly flows downhill, carving U-shaped valleys "
        "and leaving piles of rock called moraines."
    ),
    "jazz_origins": (
        "Jazz grew up in New Orleans in the early twentieth century, mixing blues, ragtime and brass band "
        "music. Improvisation is at its heart: musicians invent melodies on the spot over a shared chord "
        "progression, and Louis Armstrong made the improvised solo famous."
    ),
    "recycling_aluminum": (
        "Recycling aluminium cans saves about 95 percent of the energy needed to make the metal from bauxite "
        "ore, because melting scrap takes far less electricity than smelting. A used can can be back on a "
        "shop shelf as a new can within about two months."
    ),
    "sleep_cycles": (
        "During a night's sleep the brain passes through cycles of about ninety minutes. Each cycle moves "
        "from light sleep into deep slow-wave sleep and then into REM sleep, the stage when most vivid dreams "
        "happen and the eyes move rapidly under the lids."
    ),
    "rainbow": (
        "A rainbow appears when sunlight enters raindrops, bends, reflects off the back of each drop and "
        "bends again on the way out. Each wavelength is bent by a slightly different angle, which spreads "
        "white light into red on the outside of the arc and violet on the inside."
    ),
    "compound_interest": (
        "With compound interest, the interest earned each period is added to the balance and itself earns "
        "interest afterwards. A deposit growing at 7 percent a year therefore roughly doubles in ten years, "
        "while simple interest would take more than fourteen."
    ),
    "monarch_migration": (
        "Each autumn millions of monarch butterflies fly up to 4,000 kilometres from Canada and the United "
        "States to overwinter in fir forests in the mountains of central Mexico. No single butterfly makes "
        "the round trip: it takes several generations to return north."
    ),
    "bicycle_gears": (
        "A bicycle's gears change how far the rear wheel turns for each turn of the pedals. A small front "
        "chainring with a large rear sprocket makes climbing hills easy but slow, while a large chainring "
        "with a small sprocket gives speed on flat roads."
    ),
    "tea_types": (
        "Green, black and oolong teas all come from the leaves of the same plant, Camellia sinensis. The "
        "difference lies in processing: green tea is heated soon after picking to stop oxidation, black tea "
        "is fully oxidised, and oolong sits in between."
    ),
    "earthquakes": (
        "Earthquakes happen when stress builds up along a fault until the rocks suddenly slip. The energy "
        "released travels as seismic waves, and the moment magnitude scale is logarithmic: each whole number "
        "step means about 32 times more energy."
    ),
    "lighthouses": (
        "A lighthouse warns ships away from rocks and guides them into harbour. Many use a Fresnel lens, made "
        "of concentric rings of glass prisms, which concentrates the lamp into a beam visible for more than "
        "thirty kilometres, and each light flashes in its own pattern so sailors can tell them apart."
    ),
    "origami": (
        "Origami is the art of folding a single sheet of paper into a figure without cutting or gluing it. "
        "The traditional crane is one of its best known models, and mathematicians have shown that folding "
        "can solve problems such as trisecting an angle that ruler and compass cannot."
    ),
    "penguins": (
        "Emperor penguins breed during the Antarctic winter. After the female lays a single egg she returns "
        "to the sea to feed, and the male balances the egg on his feet under a fold of skin for about two "
        "months, huddling with other males against the wind and eating nothing."
    ),
    "solar_panels": (
        "A solar panel is made of photovoltaic cells, usually of silicon. When light strikes a cell it frees "
        "electrons that flow as direct current; an inverter then converts it to the alternating current used "
        "by household appliances and the grid."
    ),
    "dna_structure": (
        "DNA is a double helix: two strands twisted around each other and held together by pairs of bases, "
        "adenine with thymine and cytosine with guanine. Its structure was described in 1953 by Watson and "
        "Crick, using X-ray images made by Rosalind Franklin."
    ),
    "cheese_making": (
        "Cheese starts when milk is curdled with rennet or acid, separating solid curds from liquid whey. The "
        "curds are cut, drained, salted and pressed, and hard cheeses such as cheddar are then aged for "
        "months while bacteria and enzymes develop their flavour."
    ),
    "wind_chill": (
        "Wind chill describes how cold the air feels on exposed skin. Moving air strips away the thin layer "
        "of warm air next to the body, so at minus ten degrees a strong wind can make it feel like minus "
        "twenty and frostbite sets in much sooner."
    ),
    "pyramids": (
        "The Great Pyramid of Giza was built for the pharaoh Khufu around 2560 BC from more than two million "
        "limestone and granite blocks. For almost four thousand years it was the tallest structure made by "
        "humans anywhere in the world."
    ),
    # Near neighbours of the passages above: the right one must win against a passage on a related topic.
    "bumblebees": (
        "A bumblebee nest is started in spring by a single queen that survived the winter alone underground. "
        "The colony never grows beyond a few hundred bees and dies out in autumn, when only the newly mated "
        "queens go into hibernation."
    ),
    "tsunamis": (
        "A tsunami is a series of waves set off when the seabed is suddenly pushed up, usually by an undersea "
        "earthquake. In deep water the waves are low but travel as fast as a jet plane; near the shore they "
        "slow down and pile up into walls of water."
    ),
    "espresso": (
        "An espresso machine forces water at about nine bars of pressure through a tightly packed puck of "
        "finely ground coffee for roughly twenty-five seconds. The result is a small, concentrated shot "
        "topped with a foam of emulsified oils called crema."
    ),
    "wine_fermentation": (
        "In wine making, yeasts living on the grape skins or added by the winemaker convert the sugar in the "
        "crushed grapes into alcohol. Red wines get their colour because the juice is fermented together with "
        "the dark skins, while white wines are pressed off the skins first."
    ),
    "mount_everest": (
        "Mount Everest rises 8,849 metres above sea level on the border between Nepal and Tibet. It was first "
        "climbed in 1953 by Edmund Hillary and Tenzing Norgay, and above about 8,000 metres climbers enter the "
        "death zone, where the air holds too little oxygen to survive for long."
    ),
    "antarctic_ice": (
        "The Antarctic ice sheet holds about 60 percent of the world's fresh water, in places more than four "
        "kilometres thick. If it all melted, sea levels would rise by roughly 58 metres."
    ),
}

# (question, id of the passage that answers it)
QUESTIONS: list[tuple[str, str]] = [
    ("How do insects that make a sweet food show each other where nectar can be found?", "honeybees"),
    ("Why do some mountains that spew molten rock have gentle sides while others are steep?", "volcanoes"),
    ("What gives a naturally leavened bread its sour taste?", "sourdough"),
    ("Where does most of the oxygen in our atmosphere come from?", "photosynthesis"),
    ("What causes the sea level along the coast to rise and fall twice a day?", "tides"),
    ("Which reply to 1.e4 do top chess players choose most often?", "chess_openings"),
    ("Which donor can give red cells to nearly anyone in an emergency transfusion?", "blood_types"),
    ("How does a computer open a reliable network connection before sending anything?", "tcp_handshake"),
    ("How did the ancient Romans bring water into their towns from far away?", "roman_aqueducts"),
    ("Why do darker beans give a more bitter cup?", "coffee_roasting"),
    ("How can astronomers find an object that lets no light out?", "black_holes"),
    ("How should I mix kitchen and yard waste so it rots without stinking?", "composting"),
    ("Why is the long-distance road race exactly 42 km and 195 m long?", "marathon_history"),
    ("How does getting a jab protect you from catching a disease later?", "vaccines"),
    ("Who made mass production of books possible in fifteenth-century Germany?", "printing_press"),
    ("Which sea creature has several hearts and arms that can taste?", "octopus"),
    ("How do rivers of ice shape mountain valleys?", "glaciers"),
    ("In which city was the music built on on-the-spot invention born?", "jazz_origins"),
    ("How much energy is saved by melting down old drink cans instead of mining new metal?", "recycling_aluminum"),
    ("At what point in the night do we have our most vivid dreams?", "sleep_cycles"),
    ("Why are the colours of the arc in the sky after a shower always in the same order?", "rainbow"),
    ("How long does it take for savings to double at seven percent a year?", "compound_interest"),
    ("Where do the orange and black butterflies of North America spend the winter?", "monarch_migration"),
    ("Which combination of chainring and sprocket makes going uphill easier on a bike?", "bicycle_gears"),
    ("If green and black brews come from the same bush, why do they differ?", "tea_types"),
    ("How much stronger is a magnitude 7 quake than a magnitude 6?", "earthquakes"),
    ("How can sailors tell one coastal warning tower from another at night?", "lighthouses"),
    ("Which paper craft turns one square sheet into a bird without scissors or glue?", "origami"),
    ("Which bird's father keeps the egg warm on his feet through the polar winter?", "penguins"),
    ("Why does a rooftop photovoltaic system need an inverter?", "solar_panels"),
    ("Which pairs of bases hold the two strands of the genetic molecule together?", "dna_structure"),
    ("How is milk turned into curds, and how are hard varieties aged?", "cheese_making"),
    ("Why does a breezy day feel colder than the thermometer says?", "wind_chill"),
    ("For which king was the largest monument at Giza built?", "pyramids"),
    ("Which furry insect colony begins with one overwintering mother and is gone by autumn?", "bumblebees"),
    ("Why do giant sea waves caused by seafloor shaking grow taller close to land?", "tsunamis"),
    ("How much pressure does a café machine use to brew a short strong shot?", "espresso"),
    ("What gives red wine its colour when the juice of most grapes is pale?", "wine_fermentation"),
    ("Who were the first people to stand on top of the highest peak on Earth?", "mount_everest"),
    ("How much would the oceans rise if the frozen southern continent thawed completely?", "antarctic_ice"),
]
